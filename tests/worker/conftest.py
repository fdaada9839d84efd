"""Engines over the tiny models, shared by the engine test modules."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from shared.model_types import get_model_type
from worker.engine import Engine

EngineFor = Callable[[str], Engine]


@pytest.fixture(scope="module")
def engine_for(tiny_model_dir: Callable[[str], Path]) -> EngineFor:
    """`engine_for("llama")` -> an unquantized CPU engine, loaded once per module."""
    engines: dict[str, Engine] = {}

    def get(family: str) -> Engine:
        if family not in engines:
            engines[family] = Engine.load(
                tiny_model_dir(family), model_type=get_model_type(family), quantization="none", device="cpu"
            )
        return engines[family]

    return get
