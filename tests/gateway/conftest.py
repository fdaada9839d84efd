"""A real Dukat for the system tests: `dukat serve` as a process on a free port, its worker host and
model workers real processes, tiny models in its models_dir, a local hub behind HF_ENDPOINT."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from shared.processes import GATEWAY_READY, ChildProcess
from tests.support.hub_server import HubServer
from tests.support.tool_templates import install_hermes_template

# Models the served instance knows: id -> family. Chat models run unquantized for speed here;
# quantization has its own tests.
SERVED = {
    "tiny/tinyllama": "tinyllama",
    "tiny/hermes": "tinyllama",  # with a tool-aware chat template (tests/support/tool_templates.py)
    "tiny/mistral": "mistral",
    "tiny/gpt2": "gpt2",
    "tiny/t5": "t5",
    "tiny/bert": "bert",
    "tiny/reranker": "cross-encoder",  # a one-label BERT classifier: the rerank task
    "tiny/unload-me": "llama",
    "tiny/kill-me": "opt",
}
DEFAULT_MODEL = "tiny/tinyllama"
TEST_ENV = {"OMP_NUM_THREADS": "1", "DUKAT_WORKER_THREADS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
# The served instance's local host token, so a test's own ModelManager may call that host too.
INTERNAL_TOKEN = "test-internal-token"


@dataclass
class Dukat:
    url: str
    models_dir: Path
    config_path: Path
    hub: HubServer
    process: ChildProcess

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def config(self) -> dict:
        return json.loads(self.config_path.read_text())


def write_models(models_dir: Path, tiny_model_dir: Callable[[str], Path], served: dict[str, str]) -> Path:
    """Copy tiny models into `models_dir` and write a config file naming them; returns its path."""
    entries = {}
    for model_id, family in served.items():
        dest = models_dir / model_id
        if not dest.exists():
            shutil.copytree(tiny_model_dir(family), dest)
        entries[model_id] = {
            "description": f"tiny {family}",
            "quantization": "none",
            "default_parameters": {"temperature": 0.7, "max_new_tokens": 32},
            "owner_note": "a key Dukat does not know, kept on rewrite",
        }
    config_path = models_dir / "config.json"
    config_path.write_text(json.dumps({"models": entries, "default_model": DEFAULT_MODEL}, indent=2))
    return config_path


@pytest.fixture(scope="session")
def dukat(
    tiny_model_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory, session_hub: HubServer
) -> Iterator[Dukat]:
    models_dir = tmp_path_factory.mktemp("served") / "models"
    models_dir.mkdir()
    config_path = write_models(models_dir, tiny_model_dir, SERVED)
    install_hermes_template(models_dir / "tiny/hermes")
    env = {
        **TEST_ENV,
        "HF_ENDPOINT": session_hub.url,
        "HF_HOME": str(models_dir.parent / "hf-home"),
        "DUKAT_LOG_LEVEL": "warning",
        "DUKAT_STOP_TIMEOUT_S": "5",
        "DUKAT_INTERNAL_TOKEN": INTERNAL_TOKEN,
    }
    proc = ChildProcess(
        "gateway.cli", ["serve", "--port", "0", "--models-dir", str(models_dir)],
        ready_prefix=GATEWAY_READY, env=env,
    )
    url = proc.start(timeout=120)
    try:
        yield Dukat(url=url, models_dir=models_dir, config_path=config_path, hub=session_hub, process=proc)
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def http(dukat: Dukat) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=dukat.url, timeout=120) as client:
        yield client
