"""The seed's Python API, run as its example is written: `ModelManager(...)` starts its own local worker
host process, downloads from the (local) hub, loads into worker processes, generates, and cleans up.

Each test does the steps it needs itself (download and load are idempotent and cheap the second time),
so any one of them runs alone; they share one manager, and with it one host, to keep the run short.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from augment_adam.ai_agent.models import ModelManager
from shared.errors import ConflictError, ModelNotFoundError, NotFoundError
from tests.gateway.conftest import TEST_ENV
from tests.support.checks import process_gone, wait_for
from tests.support.hub_fixtures import TINY_REPO
from tests.support.hub_server import HubServer

METADATA_KEYS = {
    "model",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "time_to_first_token_s",
    "generation_time_s",
    "tokens_per_second",
}


@dataclass
class Seed:
    manager: ModelManager
    root: Path

    @property
    def config(self) -> dict[str, Any]:
        return json.loads((self.root / "config.json").read_text())


def host_processes(root: Path) -> list[psutil.Process]:
    """The worker host(s) this test's manager started (children of this process, by models_dir)."""
    models_dir = str(root / "models")
    return [
        p
        for p in psutil.Process().children()
        if "worker.host" in p.cmdline() and models_dir in p.cmdline() and not process_gone(p.pid)
    ]


@pytest.fixture(scope="module")
def seed(session_hub: HubServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seed]:
    root = tmp_path_factory.mktemp("seed")
    with pytest.MonkeyPatch.context() as mp:
        # The manager's host inherits this environment: set before the manager exists.
        env = {**TEST_ENV, "HF_ENDPOINT": session_hub.url, "HF_HOME": str(root / "hf-home")}
        for name, value in env.items():
            mp.setenv(name, value)
        for name in [n for n in os.environ if n.startswith("DUKAT_") and n != "DUKAT_WORKER_THREADS"]:
            mp.delenv(name)
        manager = ModelManager(
            models_dir=str(root / "models"),
            config_path=str(root / "config.json"),
            default_model=TINY_REPO,
            device_map="auto",
        )
        try:
            yield Seed(manager, root)
        finally:
            manager.close()


def loaded(seed: Seed) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in seed.manager.list_loaded_models()}


def test_both_import_paths_give_the_same_manager() -> None:
    from gateway import ModelManager as FromGateway

    assert FromGateway is ModelManager


def test_download_model_puts_the_repo_under_models_dir(seed: Seed) -> None:
    path = seed.manager.download_model(TINY_REPO)
    assert Path(path) == seed.root / "models" / TINY_REPO
    assert (Path(path) / "config.json").is_file() and (Path(path) / "model.safetensors").is_file()
    row = {m["id"]: m for m in seed.manager.list_available_models()}[TINY_REPO]
    assert row["downloaded"] is True and row["size_bytes"] > 0 and row["state"] in ("available", "loaded")
    assert TINY_REPO in seed.config["models"]


def test_download_of_a_missing_repo_raises_model_not_found(seed: Seed) -> None:
    with pytest.raises(ModelNotFoundError, match="dukat-test/not-on-the-hub"):
        seed.manager.download_model("dukat-test/not-on-the-hub")


def test_load_then_generate_with_the_default_model(seed: Seed) -> None:
    seed.manager.download_model(TINY_REPO)
    info = seed.manager.load_model(TINY_REPO, quantization="none")
    assert {k: info[k] for k in ("id", "state", "device", "quantization")} == {
        "id": TINY_REPO,
        "state": "loaded",
        "device": "cpu",
        "quantization": "none",
    }
    assert info["memory_bytes"] > 0 and info["pid"]

    response, metadata = seed.manager.generate(
        prompt="Hello", system_prompt="You are helpful", temperature=0.7, max_new_tokens=16
    )
    assert isinstance(response, str)
    assert set(metadata) == METADATA_KEYS
    assert metadata["model"] == TINY_REPO  # model_id=None: the default given to the constructor
    assert metadata["finish_reason"] in ("stop", "length")
    assert metadata["prompt_tokens"] > 0 and 0 < metadata["completion_tokens"] <= 16
    assert metadata["total_tokens"] == metadata["prompt_tokens"] + metadata["completion_tokens"]
    assert 0 <= metadata["time_to_first_token_s"] <= metadata["generation_time_s"]
    assert metadata["tokens_per_second"] > 0

    row = loaded(seed)[TINY_REPO]
    assert row["state"] == "loaded" and row["device"] == "cpu" and row["memory_bytes"] > 0
    assert psutil.pid_exists(row["pid"])


def test_load_model_4bit_generates_with_less_memory(seed: Seed) -> None:
    seed.manager.download_model(TINY_REPO)
    seed.manager.load_model(TINY_REPO, quantization="none")
    unquantized = loaded(seed)[TINY_REPO]["memory_bytes"]
    with pytest.raises(ConflictError, match="unload it first"):
        seed.manager.load_model(TINY_REPO, quantization="4bit")
    seed.manager.unload_model(TINY_REPO)

    info = seed.manager.load_model(TINY_REPO, quantization="4bit")
    assert info["quantization"] == "4bit" and info["state"] == "loaded"
    assert 0 < loaded(seed)[TINY_REPO]["memory_bytes"] < unquantized
    response, metadata = seed.manager.generate("Hello", model_id=TINY_REPO, max_new_tokens=4)
    assert isinstance(response, str) and 0 < metadata["completion_tokens"] <= 4
    seed.manager.unload_model(TINY_REPO)


def test_list_available_models_shows_config_and_disk(seed: Seed) -> None:
    seed.manager.download_model(TINY_REPO)
    rows = {m["id"]: m for m in seed.manager.list_available_models()}
    row = rows[TINY_REPO]
    assert row["model_type"] == "gpt" and row["downloaded"] is True
    # The constructor's default is the default (the file's wins once set_default_model wrote one).
    assert row["default"] is True
    assert sum(r["default"] for r in rows.values()) == 1


def test_set_default_model_is_saved_in_config_json(seed: Seed) -> None:
    seed.manager.download_model(TINY_REPO)
    second = seed.root / "models" / "local" / "second"
    if not second.exists():
        shutil.copytree(seed.root / "models" / TINY_REPO, second)
    try:
        assert seed.manager.set_default_model("local/second") is True
        assert seed.config["default_model"] == "local/second"
        rows = {m["id"]: m for m in seed.manager.list_available_models()}
        assert rows["local/second"]["default"] is True
        with pytest.raises(ModelNotFoundError, match="nope/nothing"):
            seed.manager.set_default_model("nope/nothing")
        assert seed.config["default_model"] == "local/second"
    finally:
        seed.manager.set_default_model(TINY_REPO)
    assert seed.config["default_model"] == TINY_REPO


def test_unload_model_ends_the_worker_process(seed: Seed) -> None:
    seed.manager.download_model(TINY_REPO)
    seed.manager.load_model(TINY_REPO)
    pid = loaded(seed)[TINY_REPO]["pid"]
    assert not process_gone(pid)

    assert seed.manager.unload_model(TINY_REPO) is True
    assert TINY_REPO not in loaded(seed)
    wait_for(lambda: process_gone(pid), 5, f"worker {pid} exits")
    with pytest.raises(NotFoundError):
        seed.manager.unload_model(TINY_REPO)


def test_local_host_that_died_is_started_again_by_the_next_call(seed: Seed) -> None:
    seed.manager.download_model(TINY_REPO)
    seed.manager.load_model(TINY_REPO, quantization="none")
    [host] = host_processes(seed.root)
    worker_pid = loaded(seed)[TINY_REPO]["pid"]

    host.kill()
    wait_for(lambda: process_gone(host.pid), 5, "the host dies")
    wait_for(lambda: process_gone(worker_pid), 5, "its worker dies with it (no orphan holding memory)")

    response, metadata = seed.manager.generate("Hello", max_new_tokens=4)  # loads the default again
    assert isinstance(response, str)
    assert metadata["model"] == TINY_REPO and metadata["completion_tokens"] > 0
    [new_host] = host_processes(seed.root)
    assert new_host.pid != host.pid
    assert loaded(seed)[TINY_REPO]["pid"] != worker_pid
    seed.manager.unload_model(TINY_REPO)


def test_close_stops_the_local_host_and_its_workers(
    session_hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its own manager: closing the shared one would leave the others without a host.
    for name, value in {**TEST_ENV, "HF_ENDPOINT": session_hub.url, "HF_HOME": str(tmp_path / "hf")}.items():
        monkeypatch.setenv(name, value)
    manager = ModelManager(models_dir=str(tmp_path / "models"), config_path=str(tmp_path / "config.json"))
    try:
        manager.download_model(TINY_REPO)
        manager.load_model(TINY_REPO, quantization="none")
        worker_pid = manager.list_loaded_models()[0]["pid"]
        [host] = host_processes(tmp_path)
    finally:
        manager.close()
    wait_for(lambda: process_gone(host.pid), 10, "the local host exits")
    wait_for(lambda: process_gone(worker_pid), 10, "its model worker exits")
    manager.close()  # twice is fine
