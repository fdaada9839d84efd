"""`4bit` in torch's int4 weight-only kernel (worker/model/int4_weights.py). Its CUDA kernel needs a
GPU: here the same op's CPU twin (`_weight_int4pack_mm_for_cpu`, its own packing) stands in for it,
so the scheme, the layer choice and the decode step's use are checked; the CUDA test runs where a
GPU is (`make gpu-check` runs this file's graph-step twin, and this one with it)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.worker.model.test_decode_step import PAD, _model, _same_course
from worker.model.int4_weights import Int4Linear, _quantize, quantize_int4
from worker.model.kv_cache import checked_decode_step


def test_a_layer_computes_with_its_dequantized_groups() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(256, 48, bias=True)
    layer = Int4Linear(linear, group=64, tiles=1)
    q, scales_zeros = _quantize(linear.weight.detach(), 64)
    scales, zeros = scales_zeros[..., 0].T, scales_zeros[..., 1].T  # [out, groups]
    want_weight = ((q.view(48, 4, 64).float() - 8) * scales[..., None] + zeros[..., None]).view(48, 256)
    # The weight the kernel computes with: its product with the identity, less the bias.
    computed = (layer(torch.eye(256)) - linear.bias.detach()).T
    torch.testing.assert_close(computed, want_weight, rtol=1e-5, atol=1e-5)
    x = torch.randn(2, 3, 256)
    torch.testing.assert_close(layer(x), x @ want_weight.T + linear.bias.detach(), rtol=1e-4, atol=1e-4)
    # 4 bits per weight: within half a step of each group's range
    step = (scales[..., None].expand(48, 4, 64).reshape(48, 256))
    assert bool(((want_weight - linear.weight.detach()).abs() <= step / 2 + 1e-6).all())


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_a_model_in_int4_takes_the_decode_step_and_stays_near_float(
    tiny_model_dir: Callable[[str], Path], name: str
) -> None:
    model = _model(tiny_model_dir, name)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.inference_mode():
        before = model(ids).logits[0, -1]
    head = model.get_output_embeddings()
    replaced = quantize_int4(model)
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    assert replaced > 0 and linears == [head]  # every layer but the head
    with torch.inference_mode():
        after = model(ids).logits[0, -1]
    assert float((after - before).abs().max()) < 0.25 * float(before.abs().max())
    decode, why = checked_decode_step(model, PAD)
    assert decode is not None, why
    assert max(_same_course(model, decode)) < 1e-4  # no activation quantization: rows stay exact


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA int4 kernel needs a GPU")
def test_the_cuda_kernel_computes_with_its_dequantized_groups() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(256, 64, bias=False).to("cuda", torch.bfloat16)
    layer = Int4Linear(linear, group=128, tiles=8)
    q, scales_zeros = _quantize(linear.weight.detach().float(), 128)
    scales, zeros = scales_zeros[..., 0].T, scales_zeros[..., 1].T
    want = ((q.view(64, 2, 128).float() - 8) * scales[..., None] + zeros[..., None]).view(64, 256)
    x = torch.randn(5, 256, device="cuda", dtype=torch.bfloat16)
    torch.testing.assert_close(layer(x).float(), x.float() @ want.T, rtol=2e-2, atol=2e-1)
