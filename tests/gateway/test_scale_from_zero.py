"""Scale from zero, against real processes on loopback: gateways whose worker host pool is empty (the
hosts' URLs answer nothing, as a StatefulSet scaled to zero). A request with DUKAT_CAPACITY_WAIT_S
waits, counted in `vllm:num_requests_waiting` (the autoscaler's signal), and is served once a host
comes up; without the wait it is a 503 `no_capacity`, counted in `dukat_capacity_refusals_total`."""

from __future__ import annotations

import json
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.processes import ChildProcess
from tests.gateway.conftest import TEST_ENV
from tests.support.checks import error_of, wait_for

MODEL = "zero/llama"
HELLO = [{"role": "user", "content": "Hello there"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def models_dir(tiny_model_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("zero") / "models"
    shutil.copytree(tiny_model_dir("llama"), models / MODEL)
    entry = {"quantization": "none", "default_parameters": {"max_new_tokens": 4}}
    (models / "config.json").write_text(json.dumps({"models": {MODEL: entry}}))
    return models


def gateway(models_dir: Path, host_url: str, wait_s: float) -> ChildProcess:
    env = {
        **TEST_ENV,
        "DUKAT_WORKER_HOSTS": host_url,
        "DUKAT_CAPACITY_WAIT_S": str(wait_s),
        "DUKAT_HOST_STATE_TIMEOUT_S": "1",
        "DUKAT_LOG_LEVEL": "warning",
    }
    args = ["serve", "--port", "0", "--models-dir", str(models_dir)]
    return ChildProcess("gateway.cli", args, ready_prefix="DUKAT_GATEWAY_READY", env=env)


@pytest.fixture
def started() -> Iterator[list[ChildProcess]]:
    procs: list[ChildProcess] = []
    try:
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and s.labels.get("model_name") == MODEL
    )


def test_without_a_host_a_request_is_refused_and_counted(
    models_dir: Path, started: list[ChildProcess]
) -> None:
    proc = gateway(models_dir, f"http://127.0.0.1:{free_port()}", wait_s=0)
    started.append(proc)
    url = proc.start(timeout=60)
    error_of(httpx.get(f"{url}/health/ready", timeout=30), 503, "no_capacity")
    resp = httpx.post(f"{url}/v1/chat/completions", json={"model": MODEL, "messages": HELLO}, timeout=60)
    error_of(resp, 503, "no_capacity")
    assert resp.headers["retry-after"]
    assert metric(url, "dukat_capacity_refusals_total") == 1
    assert metric(url, "vllm:num_requests_waiting") == 0


def test_a_request_waits_for_a_host_to_come_up_and_is_served(
    models_dir: Path, started: list[ChildProcess]
) -> None:
    host_url = f"http://127.0.0.1:{free_port()}"
    proc = gateway(models_dir, host_url, wait_s=120)
    started.append(proc)
    url = proc.start(timeout=60)
    # Ready with no host up: only requests reaching it can bring a host back.
    assert httpx.get(f"{url}/health/ready", timeout=30).status_code == 200
    answers: list[httpx.Response] = []
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 4}
    asking = threading.Thread(
        target=lambda: answers.append(httpx.post(f"{url}/v1/chat/completions", json=body, timeout=180))
    )
    asking.start()
    try:
        # The autoscaler's signal: a request waiting for its model while no host is up.
        wait_for(lambda: metric(url, "vllm:num_requests_waiting") == 1, 30, "the request counted as waiting")
        port = host_url.rsplit(":", 1)[1]
        host = ChildProcess(
            "worker.host", ["--port", port, "--models-dir", str(models_dir)],
            ready_prefix="DUKAT_HOST_READY", env={**TEST_ENV, "DUKAT_LOG_LEVEL": "warning"},
        )  # fmt: skip
        started.append(host)
        host.start(timeout=60)
    finally:
        asking.join(timeout=180)
    assert answers and answers[0].status_code == 200, answers[0].text if answers else "no answer"
    assert answers[0].json()["choices"][0]["message"]["content"] is not None
    assert metric(url, "vllm:num_requests_waiting") == 0
    assert metric(url, "dukat_capacity_refusals_total") == 0
