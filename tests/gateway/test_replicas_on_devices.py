"""Replicas beyond the hosts: a one-device CPU host with DUKAT_REPLICAS_PER_DEVICE=2 runs two workers of
one model (`"replicas": 2`), requests spread over both (least outstanding first), and an unload stops
both. Real processes on loopback; the device choice itself is checked on a faked two-GPU host state."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.errors import NoCapacityError
from shared.host_api import DeviceState, HostState, WorkerState
from shared.processes import ChildProcess
from tests.gateway.conftest import TEST_ENV
from tests.gateway.test_scale_from_zero import free_port
from tests.support.checks import wait_for
from worker.host import room

MODEL = "fleet/replicated"
HELLO = [{"role": "user", "content": "Tell me a story"}]


@pytest.fixture(scope="module")
def gateway(
    tiny_model_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    models = tmp_path_factory.mktemp("replicas") / "models"
    shutil.copytree(tiny_model_dir("llama"), models / MODEL)
    entry = {"quantization": "none", "replicas": 2, "default_parameters": {"max_new_tokens": 16}}
    (models / "config.json").write_text(json.dumps({"models": {MODEL: entry}}))
    host_url = f"http://127.0.0.1:{free_port()}"
    host_env = {**TEST_ENV, "DUKAT_DEVICES": "cpu", "DUKAT_REPLICAS_PER_DEVICE": "2",
                "DUKAT_WORKER_PING_INTERVAL_S": "0.3", "DUKAT_LOG_LEVEL": "warning"}  # fmt: skip
    host = ChildProcess(
        "worker.host", ["--port", host_url.rsplit(":", 1)[1], "--models-dir", str(models)],
        ready_prefix="DUKAT_HOST_READY", env=host_env,
    )  # fmt: skip
    gateway_env = {**TEST_ENV, "DUKAT_WORKER_HOSTS": host_url, "DUKAT_LOG_LEVEL": "warning"}
    proc = ChildProcess(
        "gateway.cli", ["serve", "--port", "0", "--models-dir", str(models)],
        ready_prefix="DUKAT_GATEWAY_READY", env=gateway_env,
    )  # fmt: skip
    try:
        host.start(timeout=60)
        with httpx.Client(base_url=proc.start(timeout=60), timeout=120) as client:
            yield client
    finally:
        proc.stop()
        host.stop()


def workers(client: httpx.Client) -> list[dict[str, Any]]:
    [host] = client.get("/api/hosts").json()
    return sorted((w for w in host["models"] if w["model_id"] == MODEL), key=lambda w: w["replica"])


def chat(client: httpx.Client) -> int:
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 16, "temperature": 0}
    return client.post("/v1/chat/completions", json=body).status_code


def both_loaded(client: httpx.Client) -> list[dict[str, Any]]:
    """The two workers, once a request has loaded them."""
    assert chat(client) == 200

    def two_loaded() -> list[dict[str, Any]] | None:
        found = workers(client)
        return found if len(found) == 2 and all(w["status"] == "loaded" for w in found) else None

    return wait_for(two_loaded, 120, "two loaded workers")


def test_two_replicas_on_one_cpu_device_share_the_requests(gateway: httpx.Client) -> None:
    both = both_loaded(gateway)
    assert [w["replica"] for w in both] == [0, 1]
    assert {w["device"] for w in both} == {"cpu"}
    assert len({w["address"] for w in both}) == 2 and len({w["pid"] for w in both}) == 2
    before = [w["finished"] for w in both]
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda _: chat(gateway), range(8))) == [200] * 8

    def both_served() -> bool:
        now = [w["finished"] for w in workers(gateway)]
        return sum(now) - sum(before) >= 8 and all(n > b for n, b in zip(now, before, strict=True))

    wait_for(both_served, 30, "each worker finished some of the 8 requests")
    metrics = gateway.get("/metrics").text
    assert metrics.count('dukat_model_state{device="cpu",host="') == 2 and 'replica="1"' in metrics

    resp = gateway.post("/api/models/unload", json={"model": MODEL})
    assert resp.status_code == 200, resp.text
    wait_for(lambda: workers(gateway) == [], 30, "both workers stopped")


def host_state(*workers: WorkerState) -> HostState:
    devices = [DeviceState(name=f"cuda:{i}", total_memory=10_000, free_memory=10_000 - 100 * i)
               for i in (0, 1)]  # fmt: skip
    return HostState(host_id="h", url="http://h", devices=devices, models=list(workers))


def test_a_replica_goes_to_a_device_without_one_and_none_beyond_the_setting() -> None:
    need = {"cuda": 1_000, "cpu": 1_000}
    device, victims = room.choose(host_state(), MODEL, "auto", need)
    assert (device, victims) == ("cuda:0", [])  # the most free memory
    first = WorkerState(model_id=MODEL, status="loaded", device="cuda:0", quantization="none")
    full = room.full_devices([first], MODEL, per_device=1)
    assert room.choose(host_state(first), MODEL, "auto", need, full)[0] == "cuda:1"
    second = WorkerState(model_id=MODEL, replica=1, status="loading", device="cuda:1", quantization="none")
    full = room.full_devices([first, second], MODEL, per_device=1)
    with pytest.raises(NoCapacityError, match="DUKAT_REPLICAS_PER_DEVICE"):
        room.choose(host_state(first, second), MODEL, "auto", need, full)
    assert room.full_devices([first, second], MODEL, per_device=2) == frozenset()


def test_requests_that_start_alike_go_to_one_replica_and_reuse_its_cache(gateway: httpx.Client) -> None:
    """Prefix-aware routing (gateway/prefix_routing.py): two long system prompts whose home replicas
    differ; each one's requests all land on its home (by load alone, idle replicas tie and every
    request would go to the same one), and the later ones reuse its cached prefix."""
    from gateway.prefix_routing import home, prefix_key
    from shared.generation import GenerateRequest, Message
    from tests.support.tiny_models import corpus_lines

    both = both_loaded(gateway)
    replica_at = {w["address"]: w["replica"] for w in both}
    lines = corpus_lines()
    # Each replica's address holds a random port: with 46 prefixes, all of them sharing one home
    # (1 in 2^45) cannot happen where 6 did (1 in 32).
    prefixes = [" ".join(lines[i : i + 60])[:1040] for i in range(0, len(lines) - 60, 6)]
    assert len(prefixes) > 40 and all(len(p) == 1040 for p in prefixes)

    def home_of(prefix: str) -> int:
        messages = [Message(role="system", content=prefix), Message(role="user", content="Q")]
        key = prefix_key(GenerateRequest(messages=messages))
        assert key is not None
        return replica_at[home(key, list(replica_at))]

    first = prefixes[0]
    other = next(p for p in prefixes[1:] if home_of(p) != home_of(first))
    def finished() -> list[int]:
        return [w["finished"] for w in workers(gateway)]

    # The loading request, once the hosts' counts have it (fresh workers: nothing else yet).
    before = wait_for(lambda: sum(finished()) > 0 and finished(), 30, "the loading request counted")
    for prefix in (first, other):
        for i in range(3):
            messages = [{"role": "system", "content": prefix}, {"role": "user", "content": f"Question {i}?"}]
            body = {"model": MODEL, "messages": messages, "max_tokens": 4, "temperature": 0}
            resp = gateway.post("/v1/chat/completions", json=body)
            assert resp.status_code == 200, resp.text
            cached = resp.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
            assert (cached > 0) is (i > 0), (i, cached)

    def landed() -> list[int] | None:
        done = [n - b for n, b in zip(finished(), before, strict=True)]
        return done if sum(done) == 6 else None

    assert wait_for(landed, 30, "6 requests finished") == [3, 3]
    assert home_of(first) != home_of(other)
