"""LoRA adapters per row (worker/model/lora.py) on real tiny models, against PEFT's own merged
models: rows of two adapters and of the base share one batch, on the model's forward and on the
own decode step, and each row's logits are the ones its merged model gives alone."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from shared.errors import InvalidRequestError, NotFoundError
from tests.conftest import TINY_MODEL_CACHE
from tests.support.tiny_adapters import ALL_PROJECTIONS, merged_model, place_tiny_adapter
from tests.worker.conftest import tiny_model
from worker.model.graph_step import GraphStep
from worker.model.kv_cache import PaddedBatch, checked_decode_step
from worker.model.lora import Adapters

PAD = 0
PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13, 14, 15], [20, 21, 22, 23, 24]]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Callable[[str], Path]) -> Path:
    """A models_dir with the tiny llama and gemma3 and two adapters of each (one on every projection)."""
    root = tmp_path_factory.mktemp("models")
    for name in ("llama", "gemma3"):
        base, _ = tiny_model(tiny_model_dir, name)
        place_tiny_adapter(base, root / f"{name}-a", TINY_MODEL_CACHE, base_id=name, seed=1)
        place_tiny_adapter(
            base, root / f"{name}-b", TINY_MODEL_CACHE, base_id=name, seed=2, r=8, targets=ALL_PROJECTIONS
        )
    return root


def _base(tiny_model_dir: Callable[[str], Path], name: str) -> tuple[Path, Any]:
    from transformers import AutoModelForCausalLM

    path, _ = tiny_model(tiny_model_dir, name)
    return path, AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _course(model: Any, decode: Any, rows: list[Any], adapters: Adapters | None) -> list[torch.Tensor]:
    """Each step's logits [rows, vocab] of PROMPTS' rows run together (each with its adapter):
    their prefill, then 6 steps."""
    batch = PaddedBatch(model, PAD, decode)
    scope = adapters.rows(rows) if adapters is not None else torch.inference_mode()
    out = []
    with torch.inference_mode(), scope:
        out.append(batch.join([PROMPTS[i] for i in range(len(rows))]))
        for step in range(6):
            out.append(batch.step([30 + step + r for r in range(len(rows))]))
    return out


@pytest.mark.parametrize("name", ["llama", "gemma3"])
@pytest.mark.parametrize("step", ["own", "graph", "forward"])
def test_rows_of_two_adapters_and_the_base_in_one_batch_equal_their_merged_models(
    tiny_model_dir: Callable[[str], Path], models_dir: Path, name: str, step: str
) -> None:
    """The graph step (worker/model/graph_step.py, its static path as the CPU runs it) hands
    adapter rows to the own step's op-by-op path."""
    path, model = _base(tiny_model_dir, name)
    adapters = Adapters(model, models_dir, max_loaded=4)
    decode: Any = None
    if step == "own":
        decode, why = checked_decode_step(model, PAD)
        assert decode is not None, why
    elif step == "graph":
        decode = GraphStep(model, max_rows=4, graphs=False, budget_tokens=1 << 20, capacity=16)
    if decode is not None:
        decode.adapters = adapters
    rows = [None, adapters.get(f"{name}-a"), adapters.get(f"{name}-b")]
    together = _course(model, decode, rows, adapters)
    references = [model, *(merged_model(path, models_dir / f"{name}-{x}") for x in "ab")]
    for i, reference in enumerate(references):
        alone = _course(reference, None, [None] * (i + 1), None)  # the row at index i of the same prompts
        for got, want in zip(together, alone, strict=True):
            scale = float(want[i].abs().max())
            assert float((got[i] - want[i]).abs().max()) <= 1e-4 * scale, f"row {i} moved"
    base_alone = _course(model, None, [None], None)
    merged_a = _course(references[1], None, [None], None)
    assert not torch.allclose(base_alone[-1], merged_a[-1], atol=1e-3), "the adapter changes nothing"


def test_least_recently_used_adapter_leaves_and_comes_back(
    tiny_model_dir: Callable[[str], Path], models_dir: Path
) -> None:
    _, model = _base(tiny_model_dir, "llama")
    adapters = Adapters(model, models_dir, max_loaded=1)
    first = adapters.get("llama-a")
    assert adapters.get("llama-a") is first
    adapters.get("llama-b")
    assert adapters.loaded() == ["llama-b"]
    assert adapters.get("llama-a") is not first  # read again
    assert adapters.drop("llama-a") and adapters.loaded() == []
    adapters.get("llama-a")
    moved = models_dir.parent / "moved-away"
    (models_dir / "llama-a").rename(moved)
    try:
        with pytest.raises(NotFoundError):
            adapters.get("llama-a")  # deleted while loaded: gone
        assert adapters.loaded() == []
    finally:
        moved.rename(models_dir / "llama-a")


def test_an_adapter_of_another_model_or_outside_models_dir_is_refused(
    tiny_model_dir: Callable[[str], Path], models_dir: Path
) -> None:
    _, model = _base(tiny_model_dir, "llama")
    adapters = Adapters(model, models_dir, max_loaded=2)
    with pytest.raises(InvalidRequestError, match="does not fit"):
        adapters.get("gemma3-b")
    with pytest.raises(NotFoundError):
        adapters.get("../llama-a")
    with pytest.raises(NotFoundError):
        adapters.get("llama")  # not there
