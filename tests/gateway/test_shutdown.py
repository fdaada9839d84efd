"""A gateway that gets SIGTERM (a Kubernetes rolling update; Ctrl-C takes the same path): it stops
accepting, lets the requests in flight finish for DUKAT_SHUTDOWN_TIMEOUT_S, then ends the streams
still open with an error event and [DONE], and exits, its worker host and workers with it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from shared.processes import ChildProcess
from tests.gateway.conftest import TEST_ENV, write_models
from tests.gateway.test_lifecycle import process_gone, wait_for

STUCK, QUICK = "tiny/stuck", "tiny/quick"
GRACE_S = 2


@pytest.fixture(scope="module")
def gateway(
    tiny_model_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, ChildProcess]]:
    models_dir = tmp_path_factory.mktemp("shutdown") / "models"
    models_dir.mkdir()
    write_models(models_dir, tiny_model_dir, {STUCK: "llama", QUICK: "llama"})
    env = {
        **TEST_ENV,
        "DUKAT_LOG_LEVEL": "warning",
        "DUKAT_PRELOAD": f"{STUCK},{QUICK}",
        "DUKAT_SHUTDOWN_TIMEOUT_S": str(GRACE_S),
        "DUKAT_SSE_KEEPALIVE_S": "0.5",
        "DUKAT_STOP_TIMEOUT_S": "2",
    }
    proc = ChildProcess(
        "gateway.cli", ["serve", "--port", "0", "--models-dir", str(models_dir)],
        ready_prefix="DUKAT_GATEWAY_READY", env=env,
    )
    url = proc.start(timeout=120)
    try:
        yield url, proc
    finally:
        proc.stop()


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


def worker_pids(url: str) -> dict[str, int]:
    hosts = httpx.get(f"{url}/api/hosts", timeout=30).json()
    return {w["model_id"]: w["pid"] for h in hosts for w in h["models"]}


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
