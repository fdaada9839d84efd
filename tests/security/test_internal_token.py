"""DUKAT_INTERNAL_TOKEN: the worker host API and the model worker wire answer only the gateway."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from shared.errors import WorkerFailedError
from shared.wire import Error, Ping, encode_frame, from_worker_decoder, read_frame
from shared.wire_client import WorkerConnection
from tests.security.conftest import CHAT_MODEL, INTERNAL_TOKEN


@pytest.fixture(scope="module")
def host(admin: httpx.Client) -> dict:
    [state] = admin.get("/api/hosts").json()
    return state


def test_the_host_api_wants_the_internal_token(host: dict) -> None:
    url = host["url"]
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {INTERNAL_TOKEN}"}):
        for method, path in (("GET", "/state"), ("GET", "/models/local"), ("POST", "/models/unload")):
            body = {"model_id": CHAT_MODEL}
            resp = httpx.request(method, f"{url}{path}", headers=headers, json=body, timeout=30)
            assert resp.status_code == 401, (method, path, resp.text)
            assert resp.json()["error"]["code"] == "invalid_api_key"
    good = httpx.get(f"{url}/state", headers={"Authorization": f"Bearer {INTERNAL_TOKEN}"}, timeout=30)
    assert good.status_code == 200 and good.json()["host_id"] == host["host_id"]


async def _raw_ping(address: str) -> object:
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(encode_frame(Ping(id=5)))
        payload = await asyncio.wait_for(read_frame(reader), 30)
        frame = from_worker_decoder.decode(payload) if payload is not None else None
        closed = await asyncio.wait_for(read_frame(reader), 30) is None
        return frame, closed
    finally:
        writer.close()


def test_the_worker_wire_wants_the_internal_token(host: dict, inference: httpx.Client) -> None:
    inference.post("/v1/completions", json={"model": CHAT_MODEL, "prompt": "hi", "max_tokens": 1})
    [worker] = [w for w in httpx.get(f"{host['url']}/state", timeout=30,
                                     headers={"Authorization": f"Bearer {INTERNAL_TOKEN}"}).json()["models"]
                if w["model_id"] == CHAT_MODEL]
    address = worker["address"]
    frame, closed = asyncio.run(_raw_ping(address))  # no Hello: an error for its frame, then closed
    assert isinstance(frame, Error) and frame.id == 5 and closed

    async def ping(token: str) -> object:
        conn = WorkerConnection(address, token=token)
        try:
            return await asyncio.wait_for(conn.ping(), 30)
        finally:
            await conn.close()

    assert asyncio.run(ping(INTERNAL_TOKEN)).model_id == CHAT_MODEL  # type: ignore[attr-defined]
    with pytest.raises(WorkerFailedError):
        asyncio.run(ping("wrong"))


async def _closed_after(address: str, send: bytes) -> float:
    """Seconds until the worker closes a connection that sent `send` and then nothing."""
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    started = asyncio.get_running_loop().time()
    try:
        writer.write(send)
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 60) == b""
        return asyncio.get_running_loop().time() - started
    finally:
        writer.close()


def test_the_worker_wire_closes_what_does_not_present_the_token_soon(
    host: dict, inference: httpx.Client
) -> None:
    inference.post("/v1/completions", json={"model": CHAT_MODEL, "prompt": "hi", "max_tokens": 1})
    [worker] = [w for w in httpx.get(f"{host['url']}/state", timeout=30,
                                     headers={"Authorization": f"Bearer {INTERNAL_TOKEN}"}).json()["models"]
                if w["model_id"] == CHAT_MODEL]
    address = worker["address"]
    # A 64 MiB frame announced before the token: closed at once, nothing read into memory.
    assert asyncio.run(_closed_after(address, (64 * 2**20).to_bytes(4, "big"))) < 5
    # Silent, and half a header: closed at the handshake deadline (10 s).
    assert 9 < asyncio.run(_closed_after(address, b"")) < 20
    assert 9 < asyncio.run(_closed_after(address, b"\x00\x00")) < 20
