"""Checks the test modules share: an OpenAI error response, a condition that comes true in time, a
process that is gone, a model worker's own counters."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import psutil

from shared.wire import WorkerLoad
from shared.wire_client import WorkerConnection
from tests.support.openapi_check import validate


def error_of(response: Any, status: int, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """The `error` object of an OpenAI error response, checked: status, JSON, the four keys, schema."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    validate(body, "ErrorResponse")
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["message"], error
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return error


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """The first truthy value of `condition()`, polled until `timeout` s (then a failed assertion)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)
    return value


def process_gone(pid: int) -> bool:
    """The process exited (a zombie nobody reaped yet counts: it holds no memory)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def worker_load(address: str, token: str | None) -> WorkerLoad:
    """A model worker's own counters, asked over its wire."""
    conn = WorkerConnection(address, token)
    try:
        return (await asyncio.wait_for(conn.pong(), 10)).load
    finally:
        await conn.close()
