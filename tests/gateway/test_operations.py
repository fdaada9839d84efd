"""Operations at scale against real processes on loopback: two gateways in front of two worker hosts,
each host offering a memory budget for two tiny models. Placement that both gateways agree on,
loads refused with needed/free bytes, LRU eviction, keep-alive, replicas sharing load, a lost host,
probes and metrics.

The tests share one cluster (module scope) and run in file order; each starts from no model loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.placement import place
from shared.host_api import HostState
from shared.processes import GATEWAY_READY, HOST_READY, ChildProcess
from shared.settings import DEFAULTS
from tests.gateway.conftest import TEST_ENV
from worker.host.memory_estimate import estimate_memory

MODELS = [f"ops/m{i}" for i in range(1, 5)]
PINNED = "ops/pinned"  # keep_alive -1 in the config file
SHORT = "ops/short"  # keep_alive "3s" in the config file
REPLICATED = "ops/replicated"  # replicas: 2
BIG = "ops/big"  # its config.json claims a KV cache no host has room for
# What a load budgets for: the batch's KV and the prefix cache's.
KV_TOKENS = DEFAULTS.kv_cache_tokens + DEFAULTS.prefix_cache_tokens
HELLO = [{"role": "user", "content": "Hello there"}]


@dataclass
class Cluster:
    models_dir: Path
    estimate: int
    budget: int
    hosts: list[ChildProcess]
    host_urls: list[str]
    host_env: dict[str, str]
    gateways: list[httpx.Client]

    def start_host(self, index: int) -> None:
        port = self.host_urls[index].rsplit(":", 1)[1]
        args = ["--port", port, "--models-dir", str(self.models_dir)]
        self.hosts[index] = ChildProcess(
            "worker.host", args, ready_prefix=HOST_READY, env=self.host_env
        )
        self.hosts[index].start(timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_models(models_dir: Path, source: Path) -> None:
    entries: dict[str, Any] = {}
    for model_id in [*MODELS, PINNED, SHORT, REPLICATED, BIG]:
        shutil.copytree(source, models_dir / model_id)
        entries[model_id] = {"description": "tiny llama", "quantization": "none",
                             "default_parameters": {"max_new_tokens": 8}}  # fmt: skip
    entries[PINNED]["keep_alive"] = -1
    entries[SHORT]["keep_alive"] = "3s"
    entries[REPLICATED]["replicas"] = 2
    big_config = models_dir / BIG / "config.json"
    big_config.write_text(json.dumps({**json.loads(big_config.read_text()), "head_dim": 1 << 16}))
    (models_dir / "config.json").write_text(json.dumps({"models": entries, "default_model": MODELS[0]}))


@pytest.fixture(scope="module")
def cluster(
    tiny_model_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    models_dir = tmp_path_factory.mktemp("ops") / "models"
    source = tiny_model_dir("llama")
    write_models(models_dir, source)
    estimate = estimate_memory(source, "none", "cpu", kv_tokens=KV_TOKENS).total_bytes
    budget = 2 * estimate + estimate // 2  # room for two models per host, not three
    host_env = {**TEST_ENV, "DUKAT_HOST_MEMORY_BYTES": str(budget), "DUKAT_WORKER_PING_INTERVAL_S": "0.3",
                "DUKAT_LOG_LEVEL": "info", "DUKAT_STOP_TIMEOUT_S": "3"}  # fmt: skip
    urls = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    c = Cluster(models_dir, estimate, budget, [None, None], urls, host_env, [])  # type: ignore[list-item]
    gateway_procs: list[ChildProcess] = []
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(c.start_host, range(2)))
        gateway_env = {**TEST_ENV, "DUKAT_WORKER_HOSTS": ",".join(urls), "DUKAT_LOG_LEVEL": "info"}
        args = ["serve", "--port", "0", "--models-dir", str(models_dir)]
        ready = GATEWAY_READY
        gateway_procs = [ChildProcess("gateway.cli", args, ready_prefix=ready, env=gateway_env) for _ in "ab"]
        with ThreadPoolExecutor(2) as pool:
            gateway_urls = list(pool.map(lambda p: p.start(timeout=60), gateway_procs))
        c.gateways = [httpx.Client(base_url=u, timeout=120) for u in gateway_urls]
        yield c
    finally:
        for client in c.gateways:
            client.close()
        for proc in [*gateway_procs, *c.hosts]:
            if proc is not None:
                proc.stop()


# ---- helpers ----------------------------------------------------------------------------------------


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)


def hosts(gateway: httpx.Client) -> list[dict[str, Any]]:
    resp = gateway.get("/api/hosts")
    assert resp.status_code == 200, resp.text
    return resp.json()


def workers(gateway: httpx.Client) -> dict[str, list[dict[str, Any]]]:
    """model id -> its workers (with the host URL), from the hosts' own state."""
    out: dict[str, list[dict[str, Any]]] = {}
    for host in hosts(gateway):
        for w in host["models"]:
            out.setdefault(w["model_id"], []).append({**w, "host": host["url"]})
    return out


def chat(gateway: httpx.Client, model_id: str, **extra: Any) -> httpx.Response:
    body = {"model": model_id, "messages": HELLO, "max_tokens": 4, "temperature": 0, **extra}
    return gateway.post("/v1/chat/completions", json=body)


def served(gateway: httpx.Client, model_id: str, **extra: Any) -> dict[str, Any]:
    resp = chat(gateway, model_id, **extra)
    assert resp.status_code == 200, resp.text
    return resp.json()


def unload_all(cluster: Cluster) -> None:
    for model_id in workers(cluster.gateways[0]):
        resp = cluster.gateways[0].post("/api/models/unload", json={"model": model_id})
        assert resp.status_code in (200, 404), resp.text
    wait_for(lambda: not workers(cluster.gateways[0]), 30, "every model unloaded")


def seen_by_host(gateway: httpx.Client, model_id: str, finished: int) -> bool:
    """The host has polled the worker since its `finished`-th request ended."""
    return any(w["finished"] >= finished for w in workers(gateway).get(model_id, []))


@pytest.fixture
def clean(cluster: Cluster) -> Cluster:
    unload_all(cluster)
    return cluster


# ---- probes ---------------------------------------------------------------------------------------


def test_gateways_are_live_and_ready_once_a_host_answers(cluster: Cluster) -> None:
    for gateway in cluster.gateways:
        assert gateway.get("/health/live").json() == {"status": "ok"}
        resp = gateway.get("/health/ready")
        assert resp.status_code == 200 and resp.json() == {"status": "ready"}, resp.text
    nowhere = {**TEST_ENV, "DUKAT_WORKER_HOSTS": f"http://127.0.0.1:{free_port()}"}
    lonely = ChildProcess("gateway.cli", ["serve", "--port", "0", "--models-dir", str(cluster.models_dir)],
                          ready_prefix=GATEWAY_READY, env=nowhere)  # fmt: skip
    try:
        url = lonely.start(timeout=60)
        assert httpx.get(f"{url}/health/live").status_code == 200
        resp = httpx.get(f"{url}/health/ready")
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"]["message"] == "not ready: no worker host answers"
    finally:
        lonely.stop()


# ---- placement and capacity -------------------------------------------------------------------------


def test_two_gateways_loading_one_model_agree_on_its_host(clean: Cluster) -> None:
    g1, g2 = clean.gateways
    states = msgspec.convert(hosts(g1), list[HostState])
    with ThreadPoolExecutor(2) as pool:
        loads = list(pool.map(lambda g: g.post("/api/models/load", json={"model": MODELS[0]}), [g1, g2]))
    assert [r.status_code for r in loads] == [200, 200], [r.text for r in loads]
    (worker,) = workers(g1)[MODELS[0]]
    expected = place(MODELS[0], states, need={"cpu": clean.estimate})
    assert expected is not None and worker["host"] == expected.url
    assert worker["estimated_bytes"] == clean.estimate


def test_a_load_no_host_has_room_for_is_refused_with_needed_and_free_bytes(clean: Cluster) -> None:
    resp = clean.gateways[1].post("/api/models/load", json={"model": BIG})
    assert resp.status_code == 503, resp.text
    error = resp.json()["error"]
    assert error["code"] == "no_capacity" and error["type"] == "server_error"
    needed = estimate_memory(clean.models_dir / BIG, "none", "cpu", kv_tokens=KV_TOKENS).total_bytes
    assert f"needs {needed} bytes on cpu" in error["message"]
    for url in clean.host_urls:
        assert f"{url} cpu: {clean.budget} bytes free of {clean.budget}" in error["message"]
    assert BIG not in workers(clean.gateways[0])
    assert resp.headers.get("retry-after")


def test_a_full_cluster_evicts_the_least_recently_used_idle_model_never_a_pinned_one(clean: Cluster) -> None:
    g1, g2 = clean.gateways
    for model_id in [PINNED, *MODELS[:3]]:  # four models: both hosts full
        served(g1, model_id)
    before = workers(g1)
    assert sorted(before) == sorted([PINNED, *MODELS[:3]])
    assert {w[0]["host"] for w in before.values()} == set(clean.host_urls)
    # Use them again, oldest first, so the order of last use is known; wait until the hosts saw it.
    order = [MODELS[2], MODELS[0], MODELS[1], PINNED]
    for model_id in order:
        served(g2, model_id)
        wait_for(lambda m=model_id: seen_by_host(g1, m, 2), 10, f"{model_id}'s host polled it")
    served(g2, MODELS[3])  # a fifth model: something must go
    after = workers(g1)
    gone = set(before) - set(after)
    assert len(gone) == 1 and MODELS[3] in after and PINNED in after
    (victim,) = gone
    new_host = after[MODELS[3]][0]["host"]
    assert before[victim][0]["host"] == new_host  # evicted where the new model went
    on_that_host = [m for m in order if before[m][0]["host"] == new_host and m != PINNED]
    assert victim == on_that_host[0]  # its least recently used unpinned model


def test_keep_alive_zero_unloads_after_the_request(clean: Cluster) -> None:
    body = served(clean.gateways[0], MODELS[0], keep_alive=0)
    assert body["choices"][0]["message"]["content"] is not None
    wait_for(lambda: MODELS[0] not in workers(clean.gateways[1]), 15, "keep_alive 0 unloads the model")
    assert chat(clean.gateways[0], MODELS[0], keep_alive="5 minutes").status_code == 400


def test_a_short_keep_alive_from_the_config_file_unloads_an_idle_model(clean: Cluster) -> None:
    served(clean.gateways[1], MODELS[1], keep_alive="-1")  # this one stays
    served(clean.gateways[1], SHORT)
    (worker,) = workers(clean.gateways[0])[SHORT]  # read within its 3 s
    assert worker["keep_alive_s"] == 3.0
    wait_for(lambda: SHORT not in workers(clean.gateways[0]), 15, "a 3 s keep-alive unloads the model")
    (pinned,) = workers(clean.gateways[0])[MODELS[1]]
    assert pinned["keep_alive_s"] == -1 and pinned["idle_s"] > 3.0


def test_a_worker_killed_while_loading_is_reported_out_of_memory(clean: Cluster) -> None:
    g1 = clean.gateways[0]
    answers: list[httpx.Response] = []
    loading = threading.Thread(
        target=lambda: answers.append(g1.post("/api/models/load", json={"model": MODELS[2]}))
    )
    loading.start()
    try:
        (worker,) = wait_for(
            lambda: [w for w in workers(g1).get(MODELS[2], []) if w["pid"]], 30, "a worker pid"
        )
        assert worker["status"] == "loading"
        os.kill(worker["pid"], signal.SIGKILL)  # as the kernel's OOM killer does
    finally:
        loading.join(60)
    error = answers[0].json()["error"]
    assert answers[0].status_code == 503 and error["code"] == "out_of_memory", error
    assert "killed" in error["message"]


# ---- replicas and lost hosts ------------------------------------------------------------------------


def test_two_replicas_share_the_load_and_survive_the_loss_of_a_host(clean: Cluster) -> None:
    g1, g2 = clean.gateways
    served(g1, REPLICATED)
    replicas = wait_for(lambda: len(workers(g1).get(REPLICATED, [])) == 2 and workers(g1)[REPLICATED], 60,
                        "a second replica on the other host")  # fmt: skip
    assert {w["host"] for w in replicas} == set(clean.host_urls)
    wait_for(
        lambda: all(w["status"] == "loaded" for w in workers(g1)[REPLICATED]), 60, "both replicas loaded"
    )

    def burst(n: int) -> list[int]:
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(lambda i: chat(clean.gateways[i % 2], REPLICATED, max_tokens=24).status_code,
                                 range(n)))  # fmt: skip

    assert burst(16) == [200] * 16
    wait_for(
        lambda: all(w["finished"] > 0 for w in workers(g1)[REPLICATED]), 10, "both workers counted requests"
    )

    # Lose one host while requests keep coming: every request is still answered.
    lost = 1
    statuses: list[int] = []
    stop = threading.Event()

    def keep_asking(gateway: httpx.Client) -> None:
        while not stop.is_set():
            statuses.append(chat(gateway, REPLICATED).status_code)

    threads = [threading.Thread(target=keep_asking, args=(g,)) for g in (g1, g2)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        proc = clean.hosts[lost].proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGKILL)  # the host only: its workers follow (parent death signal)
        wait_for(
            lambda: clean.host_urls[lost] not in {h["url"] for h in hosts(g1)}, 10, "the host marked down"
        )
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert statuses and set(statuses) == {200}, statuses

    # A model that only the lost host had is placed on the other on its next request.
    served(g2, MODELS[0])
    assert workers(g1)[MODELS[0]][0]["host"] == clean.host_urls[1 - lost]

    # The host comes back: used again, and the replica count is made up there.
    clean.start_host(lost)
    wait_for(lambda: clean.host_urls[lost] in {h["url"] for h in hosts(g1)}, 10, "the host is back")

    def second_replica_back() -> bool:
        served(g1, REPLICATED)
        back = workers(g1).get(REPLICATED, [])
        return {w["host"] for w in back if w["status"] == "loaded"} == set(clean.host_urls)

    wait_for(second_replica_back, 60, "the replica is loaded again on the returned host")
    assert len(workers(g1)[MODELS[0]]) == 1  # not loaded twice


# ---- metrics --------------------------------------------------------------------------------------


def scrape(gateway: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = gateway.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


def test_metrics_move_as_requests_are_served(cluster: Cluster) -> None:
    g1 = cluster.gateways[0]
    model = MODELS[1]
    served(g1, model)  # loaded (and its label children exist) before the first scrape
    before, other_before = scrape(g1), scrape(cluster.gateways[1])
    bodies = [served(g1, model, max_tokens=6) for _ in range(3)]
    stream = g1.post("/v1/chat/completions", json={"model": model, "messages": HELLO, "stream": True,
                                                   "max_tokens": 6, "temperature": 0})  # fmt: skip
    assert stream.status_code == 200 and stream.text.rstrip().endswith("data: [DONE]")
    after = scrape(g1)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, model_name=model, **labels) - value(
            before, name, model_name=model, **labels
        )

    generated = sum(b["usage"]["completion_tokens"] for b in bodies)
    assert moved("vllm:request_success_total") == 4
    assert moved("vllm:generation_tokens_total") >= generated > 0
    assert moved("vllm:prompt_tokens_total") >= sum(b["usage"]["prompt_tokens"] for b in bodies)
    for histogram in ("vllm:e2e_request_latency_seconds", "vllm:time_to_first_token_seconds",
                      "dukat_gateway_overhead_seconds"):  # fmt: skip
        assert moved(f"{histogram}_count") == 4, histogram
        assert moved(f"{histogram}_sum") > 0, histogram
    assert value(after, "dukat_model_state", model_name=model, state="loaded") == 1
    assert value(after, "dukat_worker_memory_bytes", model_name=model) > 0
    assert value(after, "dukat_worker_estimated_bytes", model_name=model) == cluster.estimate
    for url in cluster.host_urls:
        assert value(after, "dukat_host_up", host=url) == 1
        assert value(after, "dukat_device_memory_total_bytes", host=url, device="cpu") == cluster.budget
    # The other gateway served none of these: each replica exports its own.
    other_after = scrape(cluster.gateways[1])
    counted = "vllm:request_success_total"
    assert value(other_after, counted, model_name=model) == value(other_before, counted, model_name=model)
