"""The graph step's static path (worker/model/graph_step.py) against the model's forward on real tiny
models: the buffers, the bucket rows past the batch, the capacity doubling and the sliding windows'
masks are the same code a CUDA graph replays. Capturing graphs needs a GPU: the CUDA test runs only
where one is (`make gpu-check` runs it), the rest run the static step eagerly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.worker.model.test_decode_step import PAD, _model, _same_course
from worker.model.graph_step import GraphStep
from worker.model.kv_cache import decode_step_refusal


@pytest.mark.parametrize("name", ["llama", "mistral_sliding", "gemma3", "Qwen/Qwen3-0.6B"])
def test_the_static_step_gives_the_models_logits_across_buckets_growth_and_windows(
    tiny_model_dir: Callable[[str], Path], name: str
) -> None:
    model = _model(tiny_model_dir, name)
    # 3 rows run in the 4-row bucket (one row past the batch); 16 columns double twice.
    step = GraphStep(model, max_rows=4, graphs=False, budget_tokens=1 << 20, capacity=16, buckets=(1, 2))
    assert decode_step_refusal(model, PAD, step) is None
    assert max(_same_course(model, step)) < 1e-4


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_a_batch_past_the_buffers_budget_decodes_op_by_op_and_comes_back(
    tiny_model_dir: Callable[[str], Path], name: str
) -> None:
    """64 tokens of buffers: 3 rows (bucket 4) fit while the timeline is under 16 columns, then
    decode on the model's cache op by op; once one leaves, 2 rows of 32 columns fit again."""
    model = _model(tiny_model_dir, name)
    step = GraphStep(model, max_rows=4, graphs=False, budget_tokens=64, capacity=16, buckets=(1, 2))
    calls = {"graph": 0}
    replay = step._replay

    def counted(bucket: int) -> torch.Tensor:
        calls["graph"] += 1
        return replay(bucket)

    step._replay = counted  # type: ignore[method-assign]
    moved = _same_course(model, step)
    assert max(moved) < 1e-4
    assert 0 < calls["graph"] < len(moved) - 3  # some steps on the buffers, some not


def test_a_failed_capture_leaves_the_step_op_by_op_on_the_same_cache(
    tiny_model_dir: Callable[[str], Path],
) -> None:
    """A capture that fails mid-serving (as one whose kernels synchronise with the host would on a
    GPU: a stand-in here, since capturing needs CUDA) hands the cache back and the rows go on."""
    model = _model(tiny_model_dir, "gemma3")
    step = GraphStep(model, max_rows=4, graphs=True, budget_tokens=1 << 20, capacity=16, buckets=(1, 2))
    captured: list[int] = []

    def capture(bucket: int) -> Callable[[], torch.Tensor]:
        if len(captured) == 2:
            raise RuntimeError("operation not permitted when stream is capturing")
        captured.append(bucket)
        return lambda: step._static(bucket)

    step._capture = capture  # type: ignore[method-assign]
    assert max(_same_course(model, step)) < 1e-4
    assert captured == [2, 4] and step.failed is not None and "capturing" in step.failed


def test_warming_leaves_the_buffers_clear(tiny_model_dir: Callable[[str], Path]) -> None:
    model = _model(tiny_model_dir, "llama")
    step = GraphStep(model, max_rows=4, graphs=False, budget_tokens=1 << 20, capacity=16, buckets=(1, 2))
    with torch.inference_mode():
        assert sorted(step.warm()) == [1, 2, 4]
    assert all(float(keys.abs().sum()) == 0 for keys in step._keys)
    assert max(_same_course(model, step)) < 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (make gpu-check runs this)")
def test_captured_graphs_give_the_models_logits(tiny_model_dir: Callable[[str], Path]) -> None:
    model = _model(tiny_model_dir, "llama").to("cuda")
    step = GraphStep(model, max_rows=4, graphs=True, budget_tokens=1 << 20, capacity=16, buckets=(1, 2))
    with torch.inference_mode():
        step.warm()
    assert max(_same_course(model, step)) < 1e-4
