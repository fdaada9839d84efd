"""Dukat's own decode step (worker/model/decode_step.py) against the model's forward on real tiny
models: the same logits step after step while rows join, leave and cross sliding windows; the layer
kernels against the tensor ops they replace; and the models it does not take keep their forward."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import TINY_MODEL_CACHE
from tests.worker.conftest import tiny_model
from worker.model import cpu_kernels
from worker.model.cpu_quantization import quantize_for_cpu
from worker.model.decode_step import _TorchOps
from worker.model.kv_cache import PaddedBatch, checked_decode_step

PAD = 0


def _model(tiny_model_dir: Callable[[str], Path], name: str) -> Any:
    from transformers import AutoModelForCausalLM

    if "/" in name:
        from tests.support.tiny_modern_models import ensure_modern_model

        path = ensure_modern_model(name, TINY_MODEL_CACHE)
    else:
        path, _ = tiny_model(tiny_model_dir, name)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _same_course(model: Any, decode: Any) -> list[float]:
    """The same batch run on the model's forward and on `decode`: two rows of different lengths,
    steps, a third row joining, steps, the first leaving, 40 steps (windows of 8 are crossed, and the
    appended cache's room, 32 columns past what it held, runs out). Returns each step's largest logit
    difference relative to the logits' scale."""
    paths = [PaddedBatch(model, PAD), PaddedBatch(model, PAD, decode)]
    moved: list[float] = []

    def steps(rows: int, count: int, first: int) -> None:
        for i in range(count):
            want, got = (batch.step([(first + i + r) % 200 + 3 for r in range(rows)]) for batch in paths)
            moved.append(float((got - want).abs().max()) / float(want.abs().max()))

    with torch.inference_mode():
        for batch in paths:
            batch.join([[5, 6, 7], [9, 10, 11, 12, 13, 14, 15, 16, 17]])
        steps(2, 6, 20)
        for batch in paths:
            batch.join([[30, 31, 32, 33, 34]])
        steps(3, 6, 40)
        for batch in paths:
            batch.keep([1, 2])
        steps(2, 40, 60)
    return moved


@pytest.mark.parametrize(
    "name", ["llama", "mistral_sliding", "gemma", "gemma3", "Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen3-0.6B"]
)
def test_the_own_step_gives_the_models_logits_as_rows_join_leave_and_slide(
    tiny_model_dir: Callable[[str], Path], name: str
) -> None:
    model = _model(tiny_model_dir, name)
    decode, why = checked_decode_step(model, PAD)
    assert decode is not None, why
    assert max(_same_course(model, decode)) < 1e-4


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_block_quantized_models_take_the_own_step_near_their_forward(
    tiny_model_dir: Callable[[str], Path], name: str
) -> None:
    """Activations quantized per block turn float rounding into steps of the int8 grid: near, not
    equal (the load-time bound), while a wrong mask or position would scramble the logits."""
    if cpu_kernels.available() is not None:
        pytest.skip(str(cpu_kernels.available()))
    model = _model(tiny_model_dir, name)
    quantize_for_cpu(model, "4bit")
    decode, why = checked_decode_step(model, PAD)
    assert decode is not None, why
    moved = _same_course(model, decode)
    assert max(moved) < 0.25
    assert sorted(moved)[len(moved) // 2] < 0.05


@pytest.mark.parametrize(
    "name", ["gpt2", "opt", "HuggingFaceTB/SmolLM3-3B", "ibm-granite/granite-3.3-2b-instruct"]
)
def test_models_the_step_does_not_model_keep_their_forward(
    tiny_model_dir: Callable[[str], Path], name: str
) -> None:
    decode, why = checked_decode_step(_model(tiny_model_dir, name), PAD)
    assert decode is None
    assert why is not None and "decode on their own forward" in why


@pytest.mark.skipif(cpu_kernels.available() is not None, reason=str(cpu_kernels.available()))
@pytest.mark.parametrize("rows", [1, 3])
def test_the_layer_kernels_compute_what_their_tensor_ops_compute(rows: int) -> None:
    torch.manual_seed(0)
    hidden, heads, kv_heads, dim = 96, 4, 2, 16
    h, out = torch.randn(rows, hidden) * 3, torch.randn(rows, hidden)
    w, w2 = torch.randn(hidden), torch.randn(hidden)
    none = torch.empty(0)
    qkv = torch.randn(rows, (heads + 2 * kv_heads) * dim)
    angles = torch.rand(rows, dim // 2) * 6
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    # Keys as a sliding layer returns them (a view of a longer cache), pads at the left of row 0.
    keys, values = (torch.randn(rows, kv_heads, 12, dim)[:, :, 3:] for _ in range(2))
    q = torch.randn(rows, heads, 1, dim)
    mask = torch.ones(rows, 11, dtype=torch.long)
    mask[0, :5] = 0
    calls: list[tuple[str, tuple[Any, ...]]] = [
        ("rms_norm", (h, w, 1e-6)),
        ("residual_norm", (h, out, w2, w, 1e-5)),
        ("residual_norm", (h, out, none, w, 1e-5)),
        ("qkv_heads", (qkv, torch.randn(dim), torch.randn(dim), 1e-6, cos, sin, heads, kv_heads, dim)),
        ("qkv_heads", (qkv, none, none, 1e-6, cos, sin, heads, kv_heads, dim)),
        ("decode_attention", (q, keys, values, mask, 0.3)),
        ("decode_attention", (q, keys, values, none, 0.3)),
        *[("gated", (torch.randn(rows, 2 * hidden) * 4, kind)) for kind in (0, 1, 2)],
    ]
    for name, args in calls:
        got, want = getattr(cpu_kernels.kernels(), name)(*args), getattr(_TorchOps, name)(*args)
        for g, x in zip(*((r,) if isinstance(r, torch.Tensor) else r for r in (got, want)), strict=True):
            assert g.shape == x.shape, name
            torch.testing.assert_close(g, x.contiguous(), rtol=1e-5, atol=1e-5, msg=name)
