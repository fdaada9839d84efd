"""Faults injected for real into a running `dukat serve`: a model worker killed (kill -9) between
requests and in mid-stream, a worker stopped (SIGSTOP, as a deadlock looks from outside), 100
clients that give up, a config file broken by hand. Each ends in a clean error for at most the
requests on the failing part; everything after is served without anyone reloading by hand.

One server for the module, with short liveness settings so a hang is noticed in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from shared.processes import ChildProcess
from shared.wire import WorkerLoad
from tests.gateway.conftest import TEST_ENV, write_models
from tests.support.checks import error_of, process_gone, wait_for, worker_load
from tests.support.served import dukat_serve

VICTIM = "tiny/victim"
EMBEDDER = "tiny/embedder"
SERVED = {VICTIM: "llama", EMBEDDER: "bert"}
PING_TIMEOUT_S = 3.0
RESTARTS = 3  # per window: the crash and hang tests above the last one spend them
TOKEN = "faults-test-internal-token"
LONG = {"max_tokens": 450, "ignore_eos": True, "temperature": 1.0, "seed": 3}  # the whole context


class Served:
    def __init__(self, url: str, config_path: Path, process: ChildProcess) -> None:
        self.url, self.config_path, self.process = url, config_path, process
        self.http = httpx.Client(base_url=url, timeout=120)

    def worker(self, model_id: str = VICTIM) -> dict[str, Any]:
        """The host's record of the model's worker (the truth the gateway reads)."""
        hosts = self.http.get("/api/hosts").json()
        return next(w for h in hosts for w in h["models"] if w["model_id"] == model_id)

    def chat(self, model_id: str = VICTIM, **extra: Any) -> httpx.Response:
        body = {"model": model_id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **extra}
        return self.http.post("/v1/chat/completions", json=body)

    def stream_lines(self, on_first: Callable[[], None], **extra: Any) -> list[str]:
        """A long stream's lines (comments included); `on_first` runs after its first event."""
        messages = [{"role": "user", "content": "go"}]
        body = {"model": VICTIM, "messages": messages, "stream": True, **LONG, **extra}
        lines: list[str] = []
        with self.http.stream("POST", "/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200, resp.read()
            for line in resp.iter_lines():
                if not line:
                    continue
                lines.append(line)
                if len(lines) == 1:
                    on_first()
        return lines


@pytest.fixture(scope="module")
def served(
    tiny_model_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    models_dir = tmp_path_factory.mktemp("faults") / "models"
    models_dir.mkdir()
    config_path = write_models(models_dir, tiny_model_dir, SERVED)
    env = {
        **TEST_ENV,
        "DUKAT_INTERNAL_TOKEN": TOKEN,  # the tests read the workers' own counters over their wire
        "DUKAT_LOG_LEVEL": "warning",
        "DUKAT_PRELOAD": VICTIM,
        "DUKAT_WORKER_PING_INTERVAL_S": "0.5",
        "DUKAT_WORKER_PING_TIMEOUT_S": str(PING_TIMEOUT_S),
        "DUKAT_WORKER_RESTARTS": str(RESTARTS),
        "DUKAT_WORKER_RESTART_BACKOFF_S": "0.1",
        "DUKAT_SSE_KEEPALIVE_S": "0.3",
        "DUKAT_STOP_TIMEOUT_S": "3",
        "DUKAT_MAX_BATCH": "4",
        "DUKAT_MAX_QUEUE": "128",
    }
    with dukat_serve(models_dir, env) as (url, proc):
        yield Served(url, config_path, proc)


def data_of(lines: list[str]) -> list[str]:
    return [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]


def error_event(lines: list[str]) -> dict[str, Any]:
    """The stream's one error event, just before its [DONE]."""
    data = data_of(lines)
    assert data[-1] == "[DONE]", lines[-5:]
    error = json.loads(data[-2])["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    return error


def replaced(served: Served, old_pid: int) -> dict[str, Any]:
    return wait_for(
        lambda: (w := served.worker())["status"] == "loaded" and w["pid"] != old_pid and w,
        120, "a restarted worker is loaded",
    )


def report(what: str, seconds: float) -> None:
    # Recovery times, for the record (bench measures them; tests never assert on time).
    print(f"\n[recovery] {what}: {seconds:.2f} s")


def load_of(address: str) -> WorkerLoad:
    """The worker's own counters (the host's view is a ping behind)."""
    return asyncio.run(worker_load(address, TOKEN))


def idle(address: str, timeout: float) -> WorkerLoad:
    """The worker's counters once nothing is in flight on it."""
    return wait_for(lambda: (load := load_of(address)).in_flight == 0 and load, timeout, "the worker is idle")


# ---- crashes ----------------------------------------------------------------------------------


def test_a_worker_killed_between_requests_is_restarted_and_the_next_request_is_served(
    served: Served,
) -> None:
    assert served.chat().status_code == 200
    old = served.worker()
    started = time.monotonic()
    os.kill(old["pid"], signal.SIGKILL)
    resp = served.chat()
    report("kill -9 -> next 200", time.monotonic() - started)
    assert resp.status_code == 200, resp.text
    new = served.worker()
    assert new["pid"] != old["pid"] and new["restarts"] == old["restarts"] + 1
    assert "exited with code -9" in new["last_restart_reason"]
    assert process_gone(old["pid"])


def test_a_worker_killed_mid_stream_ends_the_stream_with_an_error_and_is_replaced(served: Served) -> None:
    old = served.worker()
    lines = served.stream_lines(lambda: os.kill(old["pid"], signal.SIGKILL))
    error = error_event(lines)
    assert error["code"] == "worker_failed" and error["type"] == "server_error", error
    resp = served.chat()
    assert resp.status_code == 200, resp.text
    assert served.worker()["pid"] != old["pid"]


# ---- hangs ------------------------------------------------------------------------------------


def test_a_stopped_worker_fails_its_requests_is_replaced_and_later_requests_are_served(
    served: Served,
) -> None:
    """SIGSTOP: the stream in flight gets keep-alives, then an error and [DONE]; a non-streaming
    request in flight gets a 502; one sent during the hang waits for the replacement and is
    served; SIGCONT changes nothing."""
    old = served.worker()
    assert old["status"] == "loaded"
    stopped_at: list[float] = []
    in_flight: list[httpx.Response] = []
    late: list[httpx.Response] = []

    def post_in_thread(into: list[httpx.Response]) -> None:
        body = {"model": VICTIM, "messages": [{"role": "user", "content": "x"}], **LONG}
        threading.Thread(
            target=lambda: into.append(served.http.post("/v1/chat/completions", json=body)), daemon=True
        ).start()

    def stop() -> None:
        post_in_thread(in_flight)
        address = old["address"]  # the worker's own counters: the host's view is a ping behind
        wait_for(lambda: load_of(address).in_flight >= 2, 30, "both requests reached it")
        os.kill(old["pid"], signal.SIGSTOP)
        stopped_at.append(time.monotonic())
        post_in_thread(late)

    try:
        lines = served.stream_lines(stop)
        report("hang -> stream error", time.monotonic() - stopped_at[0])
        error = error_event(lines)
        assert error["code"] == "worker_failed", error
        assert ": keep-alive" in lines  # the silent stream was kept open meanwhile
        wait_for(lambda: in_flight, 30, "the non-streaming request ended")
        error_of(in_flight[0], 502, "worker_failed")
        new = replaced(served, old["pid"])
        assert "did not answer a ping" in new["last_restart_reason"]
        wait_for(lambda: late, 120, "the request sent during the hang ended")
        report("hang -> replaced worker serving", time.monotonic() - stopped_at[0])
        assert late[0].status_code == 200, late[0].text
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(old["pid"], signal.SIGCONT)
    assert wait_for(lambda: process_gone(old["pid"]), 10, "the hung worker is gone")
    assert served.chat().status_code == 200


# ---- clients that leave -----------------------------------------------------------------------


def test_100_non_stream_clients_that_disconnect_leave_the_worker_idle(served: Served) -> None:
    address = served.worker()["address"]
    before = load_of(address)
    assert before.in_flight == 0

    async def give_up() -> None:
        body = {"model": VICTIM, "messages": [{"role": "user", "content": "x"}], **LONG}
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=served.url, timeout=120, limits=limits) as client:
            tasks = [asyncio.create_task(client.post("/v1/chat/completions", json=body)) for _ in range(100)]
            deadline = time.monotonic() + 60
            while (await worker_load(address, TOKEN)).in_flight < 100 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            for task in tasks:
                task.cancel()  # the client closes its connection
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(give_up())
    after = idle(address, 10)
    assert after.finished - before.finished == 100
    assert after.cancelled - before.cancelled >= 95  # a few may have finished before their client left


def test_embeddings_of_clients_that_left_are_cancelled_too(served: Served) -> None:
    assert served.http.post("/v1/embeddings", json={"model": EMBEDDER, "input": "warm"}).status_code == 200
    address = served.worker(EMBEDDER)["address"]
    before = load_of(address)

    async def give_up() -> None:
        body = {"model": EMBEDDER, "input": ["a text to embed, long enough to take a while " * 8] * 32}
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=served.url, timeout=120, limits=limits) as client:
            tasks = [asyncio.create_task(client.post("/v1/embeddings", json=body)) for _ in range(100)]
            deadline = time.monotonic() + 60
            while (await worker_load(address, TOKEN)).in_flight < 50 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(give_up())
    after = idle(address, 30)
    assert after.cancelled - before.cancelled >= 25


# ---- the config file --------------------------------------------------------------------------


def test_a_config_broken_by_hand_keeps_serving_reports_it_and_refuses_writes(served: Served) -> None:
    good = served.config_path.read_text()
    served.config_path.write_text(good[: len(good) // 2])  # an editor saved half of it
    try:
        assert served.chat().status_code == 200  # the last good config stays in force
        listing = served.http.get("/api/models")
        assert listing.status_code == 200
        problem = listing.json()["config_error"]
        assert problem and "invalid model config" in problem
        ready = served.http.get("/health/ready")  # still ready: it serves on the last good config
        assert ready.status_code == 200 and ready.json()["config_error"] == problem
        resp = served.http.post("/api/models/default", json={"model": VICTIM})
        error = error_of(resp, 500, "invalid_config")
        assert "refused until the file is fixed" in error["message"]
        for text in (listing.text, resp.text, ready.text):
            assert str(served.config_path.parent) not in text  # no client sees the file's path
    finally:
        served.config_path.write_text(good)
    assert served.http.get("/api/models").json()["config_error"] is None
    assert "config_error" not in served.http.get("/health/ready").json()
    assert served.http.post("/api/models/default", json={"model": VICTIM}).status_code == 200


# ---- restarts spent, processes -----------------------------------------------------------------

def test_past_its_restarts_a_worker_is_failed_and_the_next_request_loads_it_afresh(served: Served) -> None:
    def restarted_or_failed(old_pid: int) -> dict[str, Any] | None:
        w = served.worker()
        return w if w["status"] == "failed" or (w["status"] == "loaded" and w["pid"] != old_pid) else None

    for _ in range(RESTARTS + 1):  # the tests before spent most of them
        pid = served.worker()["pid"]
        os.kill(pid, signal.SIGKILL)
        now = wait_for(lambda p=pid: restarted_or_failed(p), 120, "the worker is restarted or failed")
        if now["status"] == "failed":
            break
    assert now["status"] == "failed", now
    assert "not restarted again" in now["error"] and now["log_tail"], now
    ps = {row["id"]: row for row in served.http.get("/api/ps").json()["data"]}
    assert ps[VICTIM]["state"] == "failed"
    resp = served.chat()  # auto-load: a fresh load, not a 503
    assert resp.status_code == 200, resp.text
    fresh = served.worker()
    assert fresh["status"] == "loaded" and fresh["restarts"] == 0


def test_the_hosts_listening_socket_is_not_inherited_by_model_workers(served: Served) -> None:
    host_port = httpx.URL(served.http.get("/api/hosts").json()[0]["url"]).port
    worker = psutil.Process(served.worker()["pid"])
    held = [c for c in worker.net_connections(kind="tcp") if c.laddr and c.laddr.port == host_port]
    assert held == [], held
