"""A small worker queue (2 running + 2 queued), then the gateway's SIGTERM, on one `dukat serve`.

- Admission: a request's n choices are admitted together or refused together before any work
  starts, with a Retry-After from the queue; clients that honour it are all served in the end.
- SIGTERM (a Kubernetes rolling update; Ctrl-C takes the same path): the gateway stops accepting,
  lets the requests in flight finish for DUKAT_SHUTDOWN_TIMEOUT_S, then ends the streams still open
  with an error event and [DONE], and exits, its worker host and workers with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from shared.processes import ChildProcess
from tests.gateway.conftest import TEST_ENV, write_models
from tests.support.checks import process_gone, wait_for, worker_load
from tests.support.served import dukat_serve

STUCK, QUICK = "tiny/stuck", "tiny/quick"
GRACE_S = 2
TOKEN = "admission-test-internal-token"


@pytest.fixture(scope="module")
def gateway(
    tiny_model_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, ChildProcess]]:
    models_dir = tmp_path_factory.mktemp("shutdown") / "models"
    models_dir.mkdir()
    write_models(models_dir, tiny_model_dir, {STUCK: "llama", QUICK: "llama"})
    env = {
        **TEST_ENV,
        "DUKAT_INTERNAL_TOKEN": TOKEN,  # the tests read the workers' own counters over their wire
        "DUKAT_LOG_LEVEL": "warning",
        "DUKAT_PRELOAD": f"{STUCK},{QUICK}",
        "DUKAT_SHUTDOWN_TIMEOUT_S": str(GRACE_S),
        "DUKAT_SSE_KEEPALIVE_S": "0.5",
        "DUKAT_STOP_TIMEOUT_S": "2",
        "DUKAT_MAX_BATCH": "2",
        "DUKAT_MAX_QUEUE": "2",
    }
    with dukat_serve(models_dir, env) as (url, proc):
        yield url, proc


class Stream(threading.Thread):
    """A stream read on its own thread; `first` is set once its first event came."""

    def __init__(self, url: str, model_id: str, max_tokens: int) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.body = {
            "model": model_id, "messages": [{"role": "user", "content": "go"}], "stream": True,
            "max_tokens": max_tokens, "temperature": 1.0, "seed": 5,
        }
        self.first = threading.Event()
        self.lines: list[str] = []
        self.start()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client, client.stream(
            "POST", "/v1/chat/completions", json=self.body
        ) as resp:
            for line in resp.iter_lines():
                if line:
                    self.lines.append(line)
                    self.first.set()
        self.first.set()

    def data(self) -> list[str]:
        return [line.removeprefix("data: ") for line in self.lines if line.startswith("data: ")]


def workers(url: str) -> dict[str, dict[str, Any]]:
    hosts = httpx.get(f"{url}/api/hosts", timeout=30).json()
    return {w["model_id"]: w for h in hosts for w in h["models"]}


def worker_pids(url: str) -> dict[str, int]:
    return {model_id: w["pid"] for model_id, w in workers(url).items()}


def test_n4_requests_on_a_small_queue_are_admitted_whole_and_all_served_with_backoff(
    gateway: tuple[str, ChildProcess],
) -> None:
    """Six clients at once, each asking for 4 choices of a worker with 4 places: one request at a
    time fits; the others get 429 with a Retry-After and retry (the openai SDK honours it)."""
    url, _ = gateway
    address = workers(url)[QUICK]["address"]
    before = asyncio.run(worker_load(address, TOKEN))
    refused: list[httpx.Response] = []

    def note(response: httpx.Response) -> None:
        if response.status_code == 429:
            refused.append(response)

    async def clients() -> list[Any]:
        http = httpx.AsyncClient(event_hooks={"response": [_async(note)]})
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=30, http_client=http)
        async with client:
            return await asyncio.gather(*(
                client.chat.completions.create(
                    model=QUICK, messages=[{"role": "user", "content": f"hello {i}"}], n=4, max_tokens=6,
                )
                for i in range(6)
            ))

    completions = asyncio.run(clients())
    assert [len(c.choices) for c in completions] == [4] * 6
    assert refused, "a worker with 4 places cannot take 6 requests of 4 at once"
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
    after = asyncio.run(worker_load(address, TOKEN))
    # Nothing was started and thrown away: exactly the 24 choices ran, none was cancelled.
    assert (after.finished - before.finished, after.cancelled - before.cancelled) == (24, 0)


def _async(hook: Callable[[httpx.Response], None]) -> Callable[[httpx.Response], Any]:
    async def call(response: httpx.Response) -> None:
        hook(response)

    return call


def test_sigterm_lets_streams_in_flight_finish_then_ends_the_rest_with_an_error_and_done(
    gateway: tuple[str, ChildProcess],
) -> None:
    url, proc = gateway
    pids = worker_pids(url)
    stuck = Stream(url, STUCK, max_tokens=400)
    assert stuck.first.wait(60), "the first stream started"
    os.kill(pids[STUCK], signal.SIGSTOP)  # it cannot finish within the grace period
    try:
        quick = Stream(url, QUICK, max_tokens=24)
        assert quick.first.wait(60), "the second stream started"
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGTERM)

        def refused() -> bool:
            try:
                httpx.get(f"{url}/health", timeout=2)
            except httpx.TransportError:
                return True
            return False

        wait_for(refused, 10, "new connections are refused")
        quick.join(30)
        quick_data = quick.data()
        assert quick_data[-1] == "[DONE]" and not any('"error"' in d for d in quick_data), quick_data[-3:]
        stuck.join(30)
        stuck_data = stuck.data()
        assert stuck_data[-1] == "[DONE]", stuck.lines[-3:]
        error = json.loads(stuck_data[-2])["error"]
        assert error["code"] == "shutting_down" and error["type"] == "server_error", error
        assert ": keep-alive" in stuck.lines
        assert proc.proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn ends by re-raising the signal
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pids[STUCK], signal.SIGCONT)
    for pid in pids.values():
        wait_for(lambda p=pid: process_gone(p), 15, "the model workers exit with the gateway")
