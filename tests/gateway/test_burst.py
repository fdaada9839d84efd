"""A burst of 200 concurrent requests on the default settings is queued and answered, not refused:
the server can serve it well within its deadlines (it used to answer 120 of them 429)."""

from __future__ import annotations

import asyncio

import httpx

from tests.gateway.conftest import Dukat

CHAT = "tiny/tinyllama"
BURST = 200


def test_a_burst_of_200_requests_is_queued_and_all_answered(dukat: Dukat) -> None:
    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=BURST, max_keepalive_connections=BURST)
        async with httpx.AsyncClient(base_url=dukat.base_url, timeout=600, limits=limits) as http:
            bodies = [
                {"model": CHAT, "max_tokens": 2, "messages": [{"role": "user", "content": f"hi {i}"}]}
                for i in range(BURST)
            ]
            return await asyncio.gather(*(http.post("/chat/completions", json=b) for b in bodies))

    responses = asyncio.run(burst())
    statuses = [r.status_code for r in responses]
    assert statuses == [200] * BURST, {s: statuses.count(s) for s in set(statuses)}
