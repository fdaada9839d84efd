"""Engines over the tiny models, shared by the engine test modules."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.model_types import ModelType, get_model_type
from tests.conftest import TINY_MODEL_CACHE
from worker.model.engine import Engine

EngineFor = Callable[[str], Engine]

# Tiny models beyond the families: (family, builder options). Windows of 8 tokens, so that every
# test's prompt and reply cross them.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "gemma3": ("gemma", {"sliding_window": 8, "layers": 3}),  # sliding layers and a full one
    "mistral_sliding": ("mistral", {"sliding_window": 8}),
}


def tiny_model(tiny_model_dir: Callable[[str], Path], name: str) -> tuple[Path, ModelType]:
    """The folder and model type of a tiny family or variant."""
    if name in VARIANTS:
        from tests.support.tiny_models import ensure_tiny_model

        family, options = VARIANTS[name]
        return ensure_tiny_model(family, TINY_MODEL_CACHE, **options), get_model_type(family)
    return tiny_model_dir(name), get_model_type(name)


@pytest.fixture(scope="module")
def engine_for(tiny_model_dir: Callable[[str], Path]) -> EngineFor:
    """`engine_for("llama")` -> an unquantized CPU engine, loaded once per module."""
    engines: dict[str, Engine] = {}

    def get(name: str) -> Engine:
        if name not in engines:
            path, model_type = tiny_model(tiny_model_dir, name)
            engines[name] = Engine.load(path, model_type=model_type, quantization="none", device="cpu")
        return engines[name]

    return get


NewEngine = Callable[..., Engine]


@pytest.fixture(scope="module")
def new_engine(tiny_model_dir: Callable[[str], Path]) -> Iterator[NewEngine]:
    """`new_engine("llama", max_batch=2)` -> a fresh unquantized CPU engine each call (for tests that
    need their own: its limits, its counters, closing it), all closed at the end of the module."""
    engines: list[Engine] = []

    def get(name: str, **kwargs: Any) -> Engine:
        path, model_type = tiny_model(tiny_model_dir, name)
        options = {"quantization": "none", "device": "cpu", **kwargs}
        engine = Engine.load(path, model_type=model_type, **options)
        engines.append(engine)
        return engine

    yield get
    for engine in engines:
        engine.close()
