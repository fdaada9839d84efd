"""`4bit` on CUDA in torch's own int4 weight-only kernel (tinygemm, `aten._weight_int4pack_mm`) as
an alternative to bitsandbytes' NF4 (DUKAT_CUDA_4BIT=tinygemm).

Why: bitsandbytes' 4-bit layers dequantize into a bf16 matrix for any batch of more than one row
and sync with the host on the way, which rules out CUDA graphs for those steps; tinygemm reads the
packed int4 weights inside its matmul (gpt-fast's int4 path) and captures in a graph. Why torch's
op and not torchao: the kernel is in torch itself (torchao wraps it), so no second pinned wheel.

Scheme (the kernel's own): per output row, groups of `group` input columns, each with a scale and a
zero point, w = (q - 8) * scale + zero for q in 0..15. Layers whose shapes the kernel does not take
stay in bf16; the LM head stays in bf16 (as the CPU path keeps it at 8 bits: its precision is
worth its bytes). The CPU build of torch has the same op for CPUs (`_for_cpu`, its own packing):
the tests run that one, since the CUDA kernel needs a GPU; `make gpu-check` runs the CUDA one.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)
GROUPS = (128, 64, 32)  # the group sizes the kernel takes, largest (fewest scales) first
_INNER_K_TILES = (8, 4, 2)  # CUDA's packing: input columns in tiles of 16 x this


class Int4Linear(nn.Module):
    """A linear layer in packed int4 groups (see the module docstring); `forward` as nn.Linear's."""

    def __init__(self, linear: nn.Linear, group: int, tiles: int) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        self.in_features, self.out_features, self.group = linear.in_features, linear.out_features, group
        q, scales_zeros = _quantize(weight, group)
        self.cuda_kernel = weight.device.type == "cuda"
        if self.cuda_kernel:
            pairs = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
            packed = torch.ops.aten._convert_weight_to_int4pack(pairs, tiles)
        else:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        self.packed: torch.Tensor
        self.scales_zeros: torch.Tensor
        self.register_buffer("packed", packed)
        self.register_buffer("scales_zeros", scales_zeros.to(linear.weight.dtype))
        self.bias: nn.Parameter | None = (
            None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        aten = torch.ops.aten
        mm = aten._weight_int4pack_mm if self.cuda_kernel else aten._weight_int4pack_mm_for_cpu
        out = mm(flat.to(self.scales_zeros.dtype), self.packed, self.group, self.scales_zeros).to(x.dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def quantize_int4(model: Any) -> int:
    """Replace `model`'s linear layers (not the LM head) by Int4Linear in place where the kernel takes
    their shape; returns how many."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    replaced = skipped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or child is head:
                continue
            shape = _kernel_shape(child)
            if shape is None:
                skipped += 1
                continue
            setattr(parent, name, Int4Linear(child, *shape))
            replaced += 1
    if skipped:
        log.info("int4: %d linear layers kept in %s (shapes the kernel does not take)", skipped,
                 next(model.parameters()).dtype)
    if replaced and next(model.parameters()).device.type == "cuda":
        torch.cuda.empty_cache()
    return replaced


def _kernel_shape(linear: nn.Linear) -> tuple[int, int] | None:
    """(group, inner k tiles) for `linear`, or None: out rows a multiple of 8 and input columns a
    multiple of a group size (and, on CUDA, of 16 x the inner tiles)."""
    n, k = linear.out_features, linear.in_features
    if n % 8:
        return None
    group = next((g for g in GROUPS if k % g == 0), None)
    tiles = next((t for t in _INNER_K_TILES if k % (16 * t) == 0), None)
    if group is None or (linear.weight.device.type == "cuda" and tiles is None):
        return None
    return group, tiles or 1


def _quantize(weight: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(q [out, in] int32 in 0..15, scales and zeros [in / group, out, 2]) of a float weight."""
    n, k = weight.shape
    grouped = weight.reshape(n, k // group, group)
    low, high = grouped.amin(-1), grouped.amax(-1)
    scales = (high - low).clamp(min=1e-6) / 15
    zeros = low + scales * 8
    q = ((grouped - low[..., None]) / scales[..., None]).round().clamp(0, 15).to(torch.int32).reshape(n, k)
    return q, torch.stack([scales, zeros], -1).transpose(0, 1).contiguous()
