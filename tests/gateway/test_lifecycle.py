"""Model lifecycle against a real `dukat serve`: load starts a worker process, unload ends it, a killed
worker is reported and comes back, a model that cannot load says why, quantization and devices.

Only this file's models are loaded and unloaded here (tiny/unload-me, tiny/kill-me and the ones it
creates); the other served models belong to the API tests and are never unloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psutil
import pytest

from shared.model_config import ConfigStore, ModelEntry
from tests.gateway.conftest import Dukat
from tests.support.checks import error_of, process_gone, wait_for
from tests.support.odd_models import save_llama_with_hidden_48

UNLOAD_ME = "tiny/unload-me"
KILL_ME = "tiny/kill-me"
HELLO = [{"role": "user", "content": "Hello there"}]


# ---- helpers ----------------------------------------------------------------------------------


def ps(http: httpx.Client) -> dict[str, dict[str, Any]]:
    resp = http.get("/api/ps")
    assert resp.status_code == 200, resp.text
    return {row["id"]: row for row in resp.json()["data"]}


def host_worker(http: httpx.Client, model_id: str) -> dict[str, Any] | None:
    """The host's own record of `model_id`'s worker (the truth the gateway reads)."""
    resp = http.get("/api/hosts")
    assert resp.status_code == 200, resp.text
    workers = [w for host in resp.json() for w in host["models"] if w["model_id"] == model_id]
    assert len(workers) <= 1, workers
    return workers[0] if workers else None


def worker_processes(dukat: Dukat, model_id: str) -> list[int]:
    """Pids of live model worker processes serving `model_id` from this Dukat's models_dir."""
    path = str(dukat.models_dir / model_id)
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "worker.model" in cmd and path in cmd and not process_gone(proc.pid):
            found.append(proc.pid)
    return found


def load(http: httpx.Client, model_id: str, **extra: Any) -> httpx.Response:
    return http.post("/api/models/load", json={"model": model_id, **extra})


def unload(http: httpx.Client, model_id: str) -> httpx.Response:
    return http.post("/api/models/unload", json={"model": model_id})


def ensure_unloaded(http: httpx.Client, model_id: str) -> None:
    if model_id in ps(http):
        assert unload(http, model_id).status_code == 200


def chat(http: httpx.Client, model_id: str, timeout: float = 60) -> httpx.Response:
    body = {"model": model_id, "messages": HELLO, "max_tokens": 4, "temperature": 0}
    return http.post("/v1/chat/completions", json=body, timeout=timeout)


def assert_answers(http: httpx.Client, model_id: str) -> None:
    resp = chat(http, model_id)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"] == model_id
    assert body["usage"]["completion_tokens"] > 0
    assert isinstance(body["choices"][0]["message"]["content"], str)


def copy_model(dukat: Dukat, source_id: str, model_id: str, **entry: Any) -> Path:
    """A copy of a served model folder under a new id, with its own config entry."""
    dest = dukat.models_dir / model_id
    if not dest.exists():
        shutil.copytree(dukat.models_dir / source_id, dest)
    entry_ = ModelEntry(description=f"copy of {source_id}", **entry)
    ConfigStore(dukat.config_path).set_entry(model_id, entry_)
    return dest


@pytest.fixture
def forget(dukat: Dukat, http: httpx.Client) -> Iterator[Callable[[str], None]]:
    """Models a test creates: unloaded and removed from the config file afterwards."""
    created: list[str] = []
    yield created.append
    for model_id in created:
        ensure_unloaded(http, model_id)
        ConfigStore(dukat.config_path).remove_entry(model_id)


# ---- load and unload --------------------------------------------------------------------------


def test_load_starts_a_worker_process_and_unload_ends_it(http: httpx.Client, dukat: Dukat) -> None:
    ensure_unloaded(http, UNLOAD_ME)

    started = time.monotonic()
    resp = load(http, UNLOAD_ME)
    load_s = time.monotonic() - started
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["id"] == UNLOAD_ME and body["state"] == "loaded" and body["device"] == "cpu"
    assert body["quantization"] == "none"  # the config entry's
    assert body["memory_bytes"] > 0 and 0 < body["load_seconds"] <= load_s

    row = ps(http)[UNLOAD_ME]
    assert row["state"] == "loaded" and row["device"] == "cpu" and row["memory_bytes"] > 0
    worker = host_worker(http, UNLOAD_ME)
    assert worker is not None and worker["status"] == "loaded" and worker["address"]
    pid = worker["pid"]
    assert row["pid"] == pid == body["pid"]
    assert psutil.pid_exists(pid) and not process_gone(pid)
    assert "worker.model" in psutil.Process(pid).cmdline()
    assert worker_processes(dukat, UNLOAD_ME) == [pid]

    started = time.monotonic()
    resp = unload(http, UNLOAD_ME)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"id": UNLOAD_ME, "state": "unloaded"}
    assert UNLOAD_ME not in ps(http)
    assert host_worker(http, UNLOAD_ME) is None
    wait_for(lambda: process_gone(pid), 5, f"worker {pid} exits after unload")
    unload_s = time.monotonic() - started
    print(f"load through the API: {load_s:.2f} s, unload until the process is gone: {unload_s:.2f} s")


@pytest.mark.parametrize("model_id", [UNLOAD_ME, "nobody/never-heard-of"])
def test_unload_of_a_model_not_loaded_is_an_openai_404(http: httpx.Client, model_id: str) -> None:
    ensure_unloaded(http, model_id)
    error = error_of(unload(http, model_id), 404, "not_found")
    assert model_id in error["message"] and error["param"] == "model"


def test_chat_to_a_known_model_not_loaded_loads_it_and_answers(http: httpx.Client) -> None:
    ensure_unloaded(http, UNLOAD_ME)
    assert_answers(http, UNLOAD_ME)
    row = ps(http)[UNLOAD_ME]
    assert row["state"] == "loaded" and row["device"] == "cpu"
    assert unload(http, UNLOAD_ME).status_code == 200


def test_concurrent_loads_of_one_model_start_one_worker(http: httpx.Client, dukat: Dukat) -> None:
    ensure_unloaded(http, UNLOAD_ME)
    results: list[httpx.Response] = []

    def one_load() -> None:
        with httpx.Client(base_url=dukat.url, timeout=120) as client:
            results.append(load(client, UNLOAD_ME))

    threads = [threading.Thread(target=one_load) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert [r.status_code for r in results] == [200, 200, 200], [r.text for r in results]
        assert {r.json()["state"] for r in results} == {"loaded"}
        worker = host_worker(http, UNLOAD_ME)
        assert worker is not None
        assert {r.json()["pid"] for r in results} == {worker["pid"]}
        assert worker_processes(dukat, UNLOAD_ME) == [worker["pid"]]
    finally:
        unload(http, UNLOAD_ME)


def test_unload_lets_a_stream_in_flight_finish(http: httpx.Client, dukat: Dukat) -> None:
    """SIGTERM drains: a stream that started before the unload ends normally, then the worker exits."""
    ensure_unloaded(http, UNLOAD_ME)
    assert load(http, UNLOAD_ME).status_code == 200
    pid = host_worker(http, UNLOAD_ME)["pid"]  # type: ignore[index]
    body = {
        "model": UNLOAD_ME, "messages": [{"role": "user", "content": "go"}], "stream": True,
        "max_tokens": 400, "temperature": 1.0, "seed": 1,
    }
    unloaded: list[httpx.Response] = []
    events: list[str] = []
    unloading: threading.Thread | None = None  # one unload, at the first event
    with http.stream("POST", "/v1/chat/completions", json=body) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: ") and unloading is None:
                unloading = threading.Thread(target=lambda: unloaded.append(unload(http, UNLOAD_ME)))
                unloading.start()
            events.append(line)
    assert unloading is not None
    unloading.join(30)
    data = [e.removeprefix("data: ") for e in events if e.startswith("data: ")]
    assert data[-1] == "[DONE]" and not any('"error"' in d for d in data)
    last = json.loads(data[-2])
    assert last["choices"][0]["finish_reason"] in ("length", "stop")
    assert unloaded and unloaded[0].status_code == 200
    wait_for(lambda: process_gone(pid), 10, f"worker {pid} exits after the drain")


def test_unload_while_loading_answers_the_waiting_load(http: httpx.Client, dukat: Dukat) -> None:
    ensure_unloaded(http, UNLOAD_ME)
    results: list[httpx.Response] = []

    def one_load() -> None:
        with httpx.Client(base_url=dukat.url, timeout=60) as client:
            results.append(load(client, UNLOAD_ME))

    thread = threading.Thread(target=one_load)
    thread.start()
    loading = wait_for(lambda: host_worker(http, UNLOAD_ME), 10, "the load starts")
    assert loading["status"] == "loading", loading  # a tiny model still takes seconds to import torch
    assert unload(http, UNLOAD_ME).status_code == 200
    thread.join(15)
    assert not thread.is_alive(), "the load waiting on an unloaded worker never answered"
    error_of(results[0], 503, "model_load_failed")
    assert UNLOAD_ME not in ps(http)
    assert worker_processes(dukat, UNLOAD_ME) == []


# ---- failures ---------------------------------------------------------------------------------


def test_killed_worker_is_restarted_by_its_host(http: httpx.Client) -> None:
    assert load(http, KILL_ME).status_code == 200
    old = host_worker(http, KILL_ME)
    assert old is not None and old["status"] == "loaded"
    assert_answers(http, KILL_ME)

    os.kill(old["pid"], signal.SIGKILL)
    def restarted() -> dict[str, Any] | None:
        w = host_worker(http, KILL_ME)
        return w if w and w["status"] == "loaded" and w["pid"] != old["pid"] else None

    new = wait_for(restarted, 120, "the host restarted the worker")
    assert new["restarts"] == old["restarts"] + 1 and "-9" in new["last_restart_reason"]
    assert ps(http)[KILL_ME]["error"] is None
    assert_answers(http, KILL_ME)
    assert unload(http, KILL_ME).status_code == 200
    assert process_gone(new["pid"])


def test_model_that_cannot_load_fails_with_the_reason(
    dukat: Dukat, http: httpx.Client, forget: Callable[[str], None]
) -> None:
    model_id = "tiny/corrupt"
    folder = dukat.models_dir / model_id
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(dukat.models_dir / UNLOAD_ME / name, folder / name)
    (folder / "model.safetensors").write_bytes(b"these are not safetensors" * 10)
    ConfigStore(dukat.config_path).set_entry(model_id, ModelEntry(description="broken", quantization="none"))
    forget(model_id)

    error = error_of(load(http, model_id), 503, "model_load_failed")
    assert model_id in error["message"] and "Safetensor" in error["message"], error
    row = ps(http)[model_id]
    assert row["state"] == "failed" and row["error"] == error["message"]
    assert row["log_tail"], "a failed worker's last log lines tell why"
    assert worker_processes(dukat, model_id) == []

    # A request for it tries a fresh load (auto-load), which says the same; the rest is fine.
    again = error_of(chat(http, model_id, timeout=30), 503, "model_load_failed")
    assert model_id in again["message"]
    assert http.get("/health").status_code == 200
    assert http.get("/api/models").status_code == 200
    assert_answers(http, "tiny/tinyllama")


# ---- quantization and devices -----------------------------------------------------------------


@pytest.fixture(scope="module")
def unquantized_memory(dukat: Dukat, http: httpx.Client) -> Iterator[int]:
    """Memory of the tiny llama loaded without quantization (its own copy, so the id is free)."""
    copy_model(dukat, UNLOAD_ME, "tiny/q-none", quantization="none")
    try:
        resp = load(http, "tiny/q-none")
        assert resp.status_code == 200, resp.text
        memory = resp.json()["memory_bytes"]
        assert unload(http, "tiny/q-none").status_code == 200
        yield memory
    finally:
        ensure_unloaded(http, "tiny/q-none")
        ConfigStore(dukat.config_path).remove_entry("tiny/q-none")


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_quantized_load_reports_quantization_and_uses_less_memory(
    dukat: Dukat,
    http: httpx.Client,
    forget: Callable[[str], None],
    unquantized_memory: int,
    quantization: str,
) -> None:
    model_id = f"tiny/q-{quantization}"
    copy_model(dukat, UNLOAD_ME, model_id, quantization="none")
    forget(model_id)

    resp = load(http, model_id, quantization=quantization)  # the request wins over the config entry
    assert resp.status_code == 200, resp.text
    assert resp.json()["quantization"] == quantization
    row = ps(http)[model_id]
    assert row["state"] == "loaded" and row["quantization"] == quantization
    assert 0 < row["memory_bytes"] < unquantized_memory, (row["memory_bytes"], unquantized_memory)
    assert_answers(http, model_id)

    # Loading it again differently is a conflict, never the old worker passed off as the new one.
    other = "none"
    error = error_of(load(http, model_id, quantization=other), 409, "conflict")
    assert quantization in error["message"] and other in error["message"]
    # The same load again is idempotent.
    again = load(http, model_id, quantization=quantization)
    assert again.status_code == 200 and again.json()["quantization"] == quantization
    assert len(worker_processes(dukat, model_id)) == 1


def test_a_name_that_is_no_device_is_a_400_naming_the_field(http: httpx.Client) -> None:
    error = error_of(load(http, UNLOAD_ME, device="tpu"), 400, "invalid_request")
    assert error["param"] == "device" and "cuda:" in error["message"], "it says what a device looks like"
    assert UNLOAD_ME not in ps(http)


@pytest.mark.parametrize("device", ["cuda:0", "cuda:7"])
def test_device_not_on_this_machine_is_a_400_naming_it(http: httpx.Client, device: str) -> None:
    offered = {d["name"] for host in http.get("/api/hosts").json() for d in host["devices"]}
    if device in offered:
        pytest.skip(f"this machine has {device}")
    ensure_unloaded(http, UNLOAD_ME)
    error = error_of(load(http, UNLOAD_ME, device=device), 400, "device_unavailable")
    assert device in error["message"] and error["param"] == "device"
    assert all(name in error["message"] for name in offered), "it says what there is instead"
    assert UNLOAD_ME not in ps(http)


def test_hosts_report_devices_and_workers(http: httpx.Client) -> None:
    hosts = http.get("/api/hosts").json()
    assert len(hosts) == 1
    host = hosts[0]
    assert host["url"].startswith("http://") and host["host_id"]
    assert host["devices"]
    for device in host["devices"]:
        assert device["name"] == "cpu" or device["name"].startswith("cuda:")
        assert 0 < device["free_memory"] <= device["total_memory"]
    json.dumps(host)  # plain JSON all the way down


def test_a_type_bitsandbytes_cannot_quantize_loads_unquantized_by_default_and_refuses_4bit(
    http: httpx.Client, dukat: Dukat, forget: Callable[[str], None], tiny_model_dir: Callable[[str], Path]
) -> None:
    """Falcon's layers are not bitsandbytes-replaceable: the default 4bit would fail every load."""
    model_id = "tiny/falcon-default"
    dest = dukat.models_dir / model_id
    if not dest.exists():
        shutil.copytree(tiny_model_dir("falcon"), dest)
    ConfigStore(dukat.config_path).set_entry(model_id, ModelEntry(description="no quantization set"))
    forget(model_id)
    refused = load(http, model_id, quantization="4bit")
    error_of(refused, 400, "quantization_unsupported")
    loaded = load(http, model_id)
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["quantization"] == "none"


def test_default_4bit_falls_back_to_none_for_shapes_it_cannot_take_but_an_explicit_4bit_is_a_400(
    http: httpx.Client, dukat: Dukat, forget: Callable[[str], None]
) -> None:
    model_id = "tiny/llama-hidden-48"
    dest = dukat.models_dir / model_id
    if not dest.exists():
        save_llama_with_hidden_48(dest)
    ConfigStore(dukat.config_path).set_entry(model_id, ModelEntry(description="no quantization set"))
    forget(model_id)
    error_of(load(http, model_id, quantization="4bit"), 400, "quantization_unsupported")
    ensure_unloaded(http, model_id)
    answered = chat(http, model_id)  # auto-load with the default (4bit): it falls back, and answers
    assert answered.status_code == 200, answered.text
    assert ps(http)[model_id]["quantization"] == "none"


def test_config_entry_edits_apply_to_the_running_model_and_completions(
    dukat: Dukat, http: httpx.Client
) -> None:
    store = ConfigStore(dukat.config_path)
    before = store.read().models[UNLOAD_ME]
    try:
        assert load(http, UNLOAD_ME).status_code == 200
        # Every served entry sets max_new_tokens 32: a completion that asks none gets it, not OpenAI's 16.
        body = {"model": UNLOAD_ME, "prompt": "Hello", "ignore_eos": True, "temperature": 0}
        resp = http.post("/v1/completions", json=body)
        assert resp.status_code == 200, resp.text
        assert resp.json()["usage"]["completion_tokens"] == 32
        # keep_alive edited in the file applies to the loaded worker from its next request: no reload.
        pid = host_worker(http, UNLOAD_ME)["pid"]  # type: ignore[index]
        store.set_entry(UNLOAD_ME, msgspec.structs.replace(before, keep_alive="7m"))
        assert http.post("/v1/completions", json={**body, "max_tokens": 2}).status_code == 200
        wait_for(lambda: ps(http)[UNLOAD_ME]["keep_alive_s"] == 420, 30, "the new keep_alive in /api/ps")
        assert host_worker(http, UNLOAD_ME)["pid"] == pid  # type: ignore[index]
    finally:
        store.set_entry(UNLOAD_ME, before)
        ensure_unloaded(http, UNLOAD_ME)
