"""One locked-down `dukat serve` shared by the security tests: inference and admin keys, an internal
token, a pull allowlist and size cap, a tiny chat model and a tiny embedding model, a local hub."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from shared.processes import ChildProcess
from tests.conftest import TINY_MODEL_CACHE
from tests.gateway.conftest import TEST_ENV, write_models
from tests.support.hub_server import HubServer
from tests.support.served import dukat_serve
from tests.support.tiny_models import ensure_tiny_model

INFERENCE_KEY = "sk-infer-test"
ADMIN_KEY = "sk-admin-test"
INTERNAL_TOKEN = "internal-test-token"
CHAT_MODEL = "tiny/tinyllama"
EMBED_MODEL = "tiny/bert"
RERANK_MODEL = "tiny/reranker"
LONG_MODEL = "tiny/long"  # a tinyllama with a 4,096-token context (test_back_pressure's long streams)
LONG_CONTEXT = 4096
MAX_MODEL_BYTES = 8 * 2**20  # the hub's BIG_REPO (24 MiB) is over it, its tiny repos are not
PULL_ALLOW = "dukat-test/*"
MAX_GENERATIONS = 4  # prompts x n; small, so fuzzed requests stay quick (schemathesis_hooks.py knows it)
STREAM_STALL_S = 4  # a stream whose client reads nothing is cancelled after this long (test_back_pressure)


@dataclass
class Locked:
    url: str
    models_dir: Path
    process: ChildProcess
    hub: HubServer

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)


@pytest.fixture(scope="session")
def locked(
    tiny_model_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory, session_hub: HubServer
) -> Iterator[Locked]:
    models_dir = tmp_path_factory.mktemp("locked") / "models"
    models_dir.mkdir()
    served = {CHAT_MODEL: "tinyllama", EMBED_MODEL: "bert", RERANK_MODEL: "cross-encoder", LONG_MODEL: "long"}

    def family_dir(family: str) -> Path:
        if family == "long":
            return ensure_tiny_model("tinyllama", TINY_MODEL_CACHE, context=LONG_CONTEXT)
        return tiny_model_dir(family)

    config_path = write_models(models_dir, family_dir, served)
    config = json.loads(config_path.read_text())
    config["models"][LONG_MODEL]["keep_alive_ceiling"] = -1  # inference keys may pin this one
    config_path.write_text(json.dumps(config))
    env = {
        **TEST_ENV,
        "HF_ENDPOINT": session_hub.url,
        "HF_HOME": str(models_dir.parent / "hf-home"),
        "DUKAT_LOG_LEVEL": "warning",
        "DUKAT_STOP_TIMEOUT_S": "5",
        "DUKAT_API_KEYS": f"other-key,{INFERENCE_KEY}",
        "DUKAT_ADMIN_KEYS": ADMIN_KEY,
        "DUKAT_INTERNAL_TOKEN": INTERNAL_TOKEN,
        "DUKAT_PULL_ALLOW": PULL_ALLOW,
        "DUKAT_MAX_MODEL_BYTES": str(MAX_MODEL_BYTES),
        "DUKAT_MAX_GENERATIONS": str(MAX_GENERATIONS),
        "DUKAT_STREAM_BUFFER_EVENTS": "16",
        "DUKAT_STREAM_STALL_TIMEOUT_S": str(STREAM_STALL_S),
        "DUKAT_PRELOAD": f"{CHAT_MODEL},{EMBED_MODEL},{RERANK_MODEL},{LONG_MODEL}",
    }
    with dukat_serve(models_dir, env) as (url, proc):
        yield Locked(url=url, models_dir=models_dir, process=proc, hub=session_hub)


@pytest.fixture(scope="session")
def admin(locked: Locked) -> Iterator[httpx.Client]:
    with locked.client(ADMIN_KEY) as client:
        yield client


@pytest.fixture(scope="session")
def inference(locked: Locked) -> Iterator[httpx.Client]:
    with locked.client(INFERENCE_KEY) as client:
        yield client


@pytest.fixture(scope="session")
def anonymous(locked: Locked) -> Iterator[httpx.Client]:
    with locked.client() as client:
        yield client
