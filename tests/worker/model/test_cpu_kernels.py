"""The CPU block kernels of 4bit/8bit: the product they compute, and that a row's result never depends
on the rows beside it (what keeps batched greedy text equal to the text alone)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from worker.model import cpu_kernels
from worker.model.cpu_kernels import BlockEmbedding, BlockLinear, dequantize, quantize

why_not = cpu_kernels.available()
pytestmark = pytest.mark.skipif(why_not is not None, reason=str(why_not))


def _linear(k: int, n: int, *, bias: bool = False, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    linear = nn.Linear(k, n, bias=bias)
    nn.init.normal_(linear.weight, std=0.05)
    return linear


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize(("k", "n", "rows"), [(64, 40, 1), (96, 33, 3), (640, 257, 19), (32, 8, 8)])
def test_a_block_linear_computes_the_product_of_its_dequantized_weights(
    bits: int, k: int, n: int, rows: int
) -> None:
    """K = 96 has a lone last block (4-bit pairs blocks); 19 rows cross the 8-row tiles."""
    linear = _linear(k, n, bias=True)
    layer = BlockLinear(linear, bits)
    x = torch.randn(rows, k)
    reference = x @ dequantize(layer.blocks, layer.scales, bits).t() + linear.bias
    with torch.inference_mode():
        got = layer(x)
    assert got.shape == (rows, n)
    # Activations are quantized to 8 bits per block: ~1% of the product's scale.
    assert float((got - reference).norm() / reference.norm()) < 0.02


@pytest.mark.parametrize("bits", [4, 8])
def test_a_rows_result_is_the_same_bits_alone_and_in_any_batch(bits: int) -> None:
    layer = BlockLinear(_linear(640, 300), bits)
    x = torch.randn(13, 640)
    with torch.inference_mode():
        together = layer(x)
        for row in (0, 7, 8, 12):
            assert torch.equal(layer(x[row : row + 1])[0], together[row])
        assert torch.equal(layer(x[3:11]), together[3:11])


@pytest.mark.parametrize(("bits", "bound"), [(4, 0.10), (8, 0.01)])
def test_quantized_weights_stay_within_their_formats_error(bits: int, bound: float) -> None:
    weight = torch.randn(64, 256)
    blocks, scales = quantize(weight, bits)
    assert blocks.dtype == torch.uint8 and scales.dtype == torch.float16
    assert blocks.shape == (64, 8, 16 if bits == 4 else 32) and scales.shape == (64, 8)
    error = (dequantize(blocks, scales, bits) - weight).norm() / weight.norm()
    assert 0 < float(error) < bound


def test_an_embedding_tied_to_the_head_reads_the_heads_blocks() -> None:
    embedding = nn.Embedding(50, 64)
    head = nn.Linear(64, 50, bias=False)
    head.weight = embedding.weight  # tied, as transformers ties them
    block_head = BlockLinear(head, 8)
    shared = BlockEmbedding.sharing(embedding, block_head)
    ids = torch.tensor([[3, 49, 0]])
    expected = dequantize(block_head.blocks, block_head.scales, 8)[ids]
    assert torch.equal(shared(ids), expected)
    assert shared.blocks is block_head.blocks  # one copy of the table
    assert shared.weight.shape == (50, 64)


def test_an_owned_embedding_keeps_a_scale_its_model_multiplies_by() -> None:
    embedding = nn.Embedding(20, 32)
    embedding.embed_scale = torch.tensor(4.0)  # type: ignore[assignment]  # Gemma's sqrt(hidden)
    owned = BlockEmbedding.owning(embedding, 8)
    ids = torch.tensor([1, 2])
    expected = embedding.weight[ids] * 4.0
    assert float((owned(ids) - expected).norm() / expected.norm()) < 0.01
