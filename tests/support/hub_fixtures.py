"""Pytest fixtures serving tiny models through a local Hugging Face Hub (`tests/support/hub_server.py`).

Loaded by `tests/conftest.py` (`pytest_plugins = ["tests.support.hub_fixtures"]`). In-process code
passes `endpoint=hub_server.url`; subprocesses get `hub_env` (HF_ENDPOINT is read when
huggingface_hub is imported, so it must be in the child's environment from the start).
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.hub_server import HubServer, RepoSource

TINY_REPO = "dukat-test/tiny-gpt2"  # main: tiny gpt2; revision "v2": tiny tinyllama (has a chat template)
GATED_REPO = "dukat-gated/tiny-gpt2"
BIG_REPO = "dukat-test/big"  # a 24 MiB weights file: bigger than huggingface_hub's 10 MiB read chunk
MESSY_REPO = "dukat-test/messy"  # tiny gpt2 plus files inference does not need
NO_WEIGHTS_REPO = "dukat-test/no-weights"
GGUF_REPO = "dukat-test/tiny-gguf"  # two .gguf files of one tiny llama (GGUF_FILE and a copy), no config.json
GGUF_FILE = "tiny-llama-f32.gguf"
HUB_TOKEN = "hf_dukat_test_token"
BIG_WEIGHTS_SIZE = 24 * 1024 * 1024
# Present in MESSY_REPO and never to be downloaded.
MESSY_EXTRAS = (
    "pytorch_model.bin", "flax_model.msgpack", "tf_model.h5", "onnx/model.onnx", "original/consolidated.pth",
    "README.md",
)


@pytest.fixture(scope="session")
def hub_repos(
    tiny_model_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, RepoSource]:
    """Repo id -> folder (or {revision: folder}) for `HubServer`; built once per session."""
    root = tmp_path_factory.mktemp("hub-repos")
    gpt2 = tiny_model_dir("gpt2")
    return {
        TINY_REPO: {"main": gpt2, "v2": tiny_model_dir("tinyllama")},
        GATED_REPO: gpt2,
        BIG_REPO: _big_repo(root / "big", gpt2),
        MESSY_REPO: _messy_repo(root / "messy", gpt2),
        NO_WEIGHTS_REPO: _no_weights_repo(root / "no-weights", gpt2),
        GGUF_REPO: _gguf_repo(root / "gguf", tiny_model_dir("llama")),
    }


@pytest.fixture(scope="session")
def session_hub(hub_repos: dict[str, RepoSource]) -> Iterator[HubServer]:
    """One local hub for the session's served instances (no gating, no token)."""
    with HubServer(hub_repos) as hub:
        yield hub


@pytest.fixture
def hub_server(hub_repos: dict[str, RepoSource]) -> Iterator[HubServer]:
    """A fresh local hub per test (its log, byte counts and knobs start empty)."""
    with HubServer(hub_repos, gated={GATED_REPO}, token=HUB_TOKEN) as hub:
        yield hub


@pytest.fixture
def hub_env(hub_server: HubServer, tmp_path: Path) -> dict[str, str]:
    """Environment variables for a subprocess that should use `hub_server` as its hub."""
    return {
        "HF_ENDPOINT": hub_server.url,
        "HF_HOME": str(tmp_path / "hf-home"),  # an empty cache: everything comes from the hub
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }


def _big_repo(dest: Path, model: Path) -> Path:
    dest.mkdir(parents=True)
    shutil.copy(model / "config.json", dest / "config.json")
    (dest / "model.safetensors").write_bytes(random.Random(0).randbytes(BIG_WEIGHTS_SIZE))
    return dest


def _gguf_repo(dest: Path, llama: Path) -> Path:
    from tests.support.tiny_gguf import write_tiny_llama_gguf

    write_tiny_llama_gguf(llama, dest / GGUF_FILE)
    shutil.copy(dest / GGUF_FILE, dest / "tiny-llama-copy.gguf")
    (dest / "README.md").write_text("GGUF files of a tiny llama\n")
    return dest


def _messy_repo(dest: Path, model: Path) -> Path:
    shutil.copytree(model, dest)
    for name in MESSY_EXTRAS:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_bytes(f"not needed: {name}\n".encode())
    return dest


def _no_weights_repo(dest: Path, model: Path) -> Path:
    dest.mkdir(parents=True)
    shutil.copy(model / "config.json", dest / "config.json")
    (dest / "model.gguf").write_bytes(b"GGUF")
    return dest
