"""The gateway's loop only waits: while clients send multi-MB request bodies (a Responses input list
of 50,000 items, 6 MB, refused by the character bound after it was read), a normal client's small
request stays within a generous bound of its idle latency, measured in the same test (medians; the
machine may be loaded). Turning the items into messages was quadratic: 27 s median then."""

from __future__ import annotations

import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.security.conftest import CHAT_MODEL, INFERENCE_KEY, LONG_MODEL, Locked

SMALL = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
# Generous: the attack's worker still takes CPU from the 2 cores the normal request shares.
FACTOR, SLACK_S = 4.0, 0.5


def median_latency(client: httpx.Client, count: int = 16, every_s: float = 0.25) -> float:
    """Small requests sent at a steady rate (not one after another: a stall of the loop then delays
    every request sent during it, not just one), their median latency."""

    def one() -> float:
        started = time.perf_counter()
        assert client.post("/v1/chat/completions", json=SMALL).status_code == 200
        return time.perf_counter() - started

    with ThreadPoolExecutor(count) as pool:
        futures = []
        for _ in range(count):
            futures.append(pool.submit(one))
            time.sleep(every_s)
        return statistics.median(f.result() for f in futures)


def big_responses_input() -> bytes:
    part = {"type": "input_text", "text": "hello there " * 2}
    item = {"type": "message", "role": "user", "content": [part]}
    return json.dumps({"model": LONG_MODEL, "input": [item] * 50_000, "max_output_tokens": 1}).encode()


@pytest.mark.slow
def test_a_normal_request_stays_near_its_idle_latency_while_huge_bodies_arrive(locked: Locked) -> None:
    body = big_responses_input()
    stop = threading.Event()
    sent = []

    def attack() -> None:
        headers = {"Authorization": f"Bearer {INFERENCE_KEY}", "Content-Type": "application/json"}
        with httpx.Client(base_url=locked.url, headers=headers, timeout=120) as client:
            while not stop.is_set():
                sent.append(client.post("/v1/responses", content=body).status_code)

    with locked.client(INFERENCE_KEY) as client:
        median_latency(client, 2)  # warm
        idle = median_latency(client)
        attackers = [threading.Thread(target=attack) for _ in range(2)]
        for thread in attackers:
            thread.start()
        try:
            time.sleep(1.0)  # the first bodies are in
            busy = median_latency(client)
        finally:
            stop.set()
            for thread in attackers:
                thread.join()
    assert sent and set(sent) == {400}, sent  # DUKAT_MAX_PROMPT_CHARS
    assert busy < FACTOR * idle + SLACK_S, (idle, busy, sent)


def test_huge_tool_descriptions_are_refused_by_the_character_bound(inference: httpx.Client) -> None:
    """Counted before tokenizing (a 9 MB one cost the worker 7.5 s to reach its context error)."""
    tool = {"type": "function", "function": {"name": "f", "description": "word " * 250_000, "parameters": {}}}
    reply = inference.post("/v1/chat/completions", json={**SMALL, "tools": [tool]})
    assert reply.status_code == 400
    assert "DUKAT_MAX_PROMPT_CHARS" in reply.json()["error"]["message"]
