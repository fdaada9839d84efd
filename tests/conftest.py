"""Session-wide test setup: one torch thread, quiet hub, a shared cache of tiny models."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

# Before torch is imported anywhere: two cores are shared, spinning OpenMP threads slow us 10-60x.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

pytest_plugins = ["tests.support.hub_fixtures"]
# What servers started by tests print (through ChildProcess's log): shown with a failing test's report.
logging.getLogger("shared.processes").setLevel(logging.INFO)

REPO_ROOT = Path(__file__).resolve().parent.parent
# Reused across runs (gitignored); entries are keyed by builder version and arguments.
TINY_MODEL_CACHE = REPO_ROOT / ".cache" / "tiny-models"


def pytest_collection_finish(session: pytest.Session) -> None:
    # Only when a test module brought torch in; conftest itself stays torch-free.
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Callable[[str], Path]:
    """`tiny_model_dir("llama")` -> a saved tiny model folder of that family, built once."""
    from tests.support.tiny_models import ensure_tiny_model

    def get(family: str) -> Path:
        return ensure_tiny_model(family, TINY_MODEL_CACHE)

    return get
