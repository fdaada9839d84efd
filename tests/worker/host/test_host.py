"""A worker host on its own, spoken to over its management API: whether a load is a repeat is the
host's call (any number of gateways may send it), made once, in its supervisor."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.processes import HOST_READY, ChildProcess
from tests.support.checks import error_of

MODEL = "tiny/host-llama"


@pytest.fixture(scope="module")
def host(tiny_model_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    models_dir = tmp_path_factory.mktemp("host") / "models"
    shutil.copytree(tiny_model_dir("llama"), models_dir / MODEL)
    env = {"OMP_NUM_THREADS": "1", "DUKAT_WORKER_THREADS": "1", "DUKAT_LOG_LEVEL": "warning"}
    args = ["--host-bind", "127.0.0.1", "--host-port", "0", "--models-dir", str(models_dir)]
    args += ["--devices", "cpu"]
    process = ChildProcess("worker.host", args, ready_prefix=HOST_READY, env=env)
    url = process.start(timeout=60)
    try:
        yield url
    finally:
        process.stop()


def load(host: str, **command: Any) -> httpx.Response:
    return httpx.post(f"{host}/models/load", json={"model_id": MODEL, **command}, timeout=120)


def test_a_repeated_load_joins_the_worker_and_a_different_one_is_a_conflict(host: str) -> None:
    answers: list[httpx.Response] = []
    one = lambda: answers.append(load(host, quantization="none"))  # noqa: E731
    loads = [threading.Thread(target=one) for _ in range(3)]
    for thread in loads:
        thread.start()
    for thread in loads:
        thread.join(120)
    try:
        assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
        pids = {a.json()["pid"] for a in answers}
        assert len(pids) == 1, "concurrent loads start one worker"
        # Pinned at spawn, before the interpreter starts: a cpu worker sees no GPU whoever starts CUDA.
        environ = Path(f"/proc/{next(iter(pids))}/environ").read_bytes().split(b"\0")
        assert b"CUDA_VISIBLE_DEVICES=" in environ and b"OMP_NUM_THREADS=1" in environ

        # Asking nothing, or what it has, joins it; the config's default quantization is not an ask.
        for same in ({}, {"device": "cpu"}, {"default_quantization": "4bit"}, {"quantization": "none"}):
            again = load(host, **same)
            assert again.status_code == 200 and again.json()["pid"] in pids, (same, again.text)

        # Asking for something else is refused by the host itself: never the old worker as the new one.
        error = error_of(load(host, quantization="4bit"), 409, "conflict", param="quantization")
        assert "'none', not '4bit'" in error["message"] and "unload it first" in error["message"]
        state = httpx.get(f"{host}/state", timeout=10).json()
        assert [(w["model_id"], w["pid"]) for w in state["models"]] == [(MODEL, next(iter(pids)))]
    finally:
        httpx.post(f"{host}/models/unload", json={"model_id": MODEL}, timeout=60)
