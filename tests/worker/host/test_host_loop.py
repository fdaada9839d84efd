"""The worker host never blocks its event loop: loading a GGUF whose header is as large as a real
model's (a vocabulary of 100k+ strings) leaves the host answering and pinging its other workers,
none of which is judged hung and restarted meanwhile."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from shared.processes import HOST_READY, ChildProcess
from tests.support.tiny_gguf import write_tiny_llama_gguf

OTHER = "tiny/loop-llama"
GGUF_MODEL = "tiny/loop-big-header-gguf"
# gguf's own reader took ~5 s (~13 s for 262k) on this header, in the host's loop, before the fix.
PADDING = 120_000


@pytest.fixture(scope="module")
def host(tiny_model_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    models_dir = tmp_path_factory.mktemp("host-loop") / "models"
    llama = tiny_model_dir("llama")
    shutil.copytree(llama, models_dir / OTHER)
    write_tiny_llama_gguf(llama, models_dir / GGUF_MODEL / "big-header.gguf", padding_strings=PADDING)
    env = {
        "OMP_NUM_THREADS": "1",
        "DUKAT_WORKER_THREADS": "1",
        "DUKAT_LOG_LEVEL": "warning",
        # A short deadline: a host that blocked its loop for a second would kill the other worker.
        "DUKAT_WORKER_PING_INTERVAL_S": "0.3",
        "DUKAT_WORKER_PING_TIMEOUT_S": "2",
    }
    args = ["--host-bind", "127.0.0.1", "--host-port", "0", "--models-dir", str(models_dir)]
    args += ["--devices", "cpu"]
    process = ChildProcess("worker.host", args, ready_prefix=HOST_READY, env=env)
    url = process.start(timeout=60)
    try:
        yield url
    finally:
        process.stop()


def _load(host: str, model_id: str) -> dict[str, object]:
    resp = httpx.post(f"{host}/models/load", json={"model_id": model_id}, timeout=300)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def test_loading_a_gguf_blocks_neither_the_host_loop_nor_its_other_workers(host: str) -> None:
    other = _load(host, OTHER)
    stop = threading.Event()
    waits: list[float] = []
    failures: list[str] = []

    def read_state() -> None:  # what every gateway does, every second, while a load runs
        with httpx.Client(timeout=2.0) as client:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    client.get(f"{host}/state").raise_for_status()
                    waits.append(time.monotonic() - started)
                except httpx.HTTPError as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                stop.wait(0.05)

    reader = threading.Thread(target=read_state)
    reader.start()
    try:
        loaded = _load(host, GGUF_MODEL)
        estimate = httpx.post(f"{host}/models/estimate", json={"model_id": GGUF_MODEL}, timeout=30)
    finally:
        stop.set()
        reader.join(10)
    try:
        assert loaded["status"] == "loaded"
        assert estimate.status_code == 200 and estimate.json()["bytes_by_kind"]["cpu"] > 0, estimate.text
        assert not failures, failures
        assert waits, "the state was read during the load"
        state = httpx.get(f"{host}/state", timeout=10).json()
        # The host's own clock: a tick every 50 ms, never more than 250 ms late.
        assert state["loop_late_max_s"] < 0.25, (state["loop_late_max_s"], max(waits))
        workers = {w["model_id"]: w for w in state["models"]}
        assert workers[OTHER]["pid"] == other["pid"], "the other worker was replaced during the load"
        assert workers[OTHER]["restarts"] == 0 and workers[OTHER]["status"] == "loaded", workers[OTHER]
    finally:
        for model_id in (GGUF_MODEL, OTHER):
            httpx.post(f"{host}/models/unload", json={"model_id": model_id}, timeout=60)
