"""Block-quantized matmuls for CPUs: what `4bit` and `8bit` run on a CPU.

Why our own kernel (q4.cpp, built once with torch's cpp_extension and cached): decode on a CPU is
bound by the bytes of weights read per token (this machine: ~20-25 GB/s), so fewer bytes per weight is
the whole game, and nothing installable here reads 4-bit weights fast on an AVX2 CPU. Measured on
Gemma 3 270M's LM head (262,144 x 640, one thread, one row): float32 76 ms, bf16 63 ms, torch's
dynamic int8 (fbgemm) 14-25 ms, torch's `_weight_int4pack_mm_for_cpu` 673 ms, `_weight_int8pack_mm`
233 ms, `_dyn_quant_matmul_4bit` 753 ms (no AVX2 paths: scalar fallbacks), an inductor-compiled
int4 dequant-and-reduce 588 ms; bitsandbytes' CPU path dequantizes per matmul (x0.46 of float32).
The format is llama.cpp's Q4_0 / Q8_0 idea (blocks of 32 along K, one float16 scale each; the
activation quantized to int8 per block, integer SIMD dot products), so a 4-bit weight costs
0.5625 bytes and an 8-bit one 1.0625. One pass over a weight row serves up to 4 rows of the batch
(their sums in registers: the tiles are templated on their row counts). The work is split over the
kernels' own threads (spin_pool.h says why not OpenMP's). layer_ops.cpp holds the small per-token
ops of worker/model/decode_step.py.

Where the kernel cannot be built (no compiler, no AVX2), `available()` says why and the loader falls
back to torch's dynamic int8 for both names.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

BLOCK = 32
# The matmuls, and the small per-token ops of a decoder layer (worker/model/decode_step.py).
_SOURCES = [Path(__file__).with_name("q4.cpp"), Path(__file__).with_name("layer_ops.cpp")]
_HEADERS = [Path(__file__).with_name("spin_pool.h")]  # the threads they split their work over
_lock = threading.Lock()
_state: dict[str, Any] = {}


def _cpu_has_avx2() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return all(f" {flag}" in flags for flag in ("avx2", "fma", "f16c"))


def kernels() -> Any:
    """The compiled extension (built on first use, then cached on disk); raises RuntimeError when it
    cannot be had here."""
    with _lock:
        if "module" in _state:
            return _state["module"]
        if "error" in _state:
            raise RuntimeError(_state["error"])
        try:
            if not _cpu_has_avx2():
                raise RuntimeError("this CPU lacks AVX2/FMA/F16C")
            _state["module"] = _built() or _build()
        except Exception as exc:  # no compiler, no ninja, no AVX2: fall back, and say why once
            _state["error"] = f"the CPU block kernels are unavailable: {type(exc).__name__}: {exc}"
            raise RuntimeError(_state["error"]) from exc
        return _state["module"]


# Threads: spin_pool.h, as many as torch's (OpenMP's teams slowed a second thread's decode 2x).
_CFLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-pthread"]


def _name() -> str:
    """The module's name, from its source, flags and torch: a changed one is built anew."""
    sources = b"".join(source.read_bytes() for source in [*_SOURCES, *_HEADERS])
    digest = hashlib.sha256(sources + " ".join(_CFLAGS).encode() + torch.__version__.encode())
    return f"dukat_q4_{digest.hexdigest()[:12]}"


def _built() -> Any:
    """The module as built before (`make install`), imported without torch's build lock: a model
    worker killed while holding that lock would leave every later load waiting on it."""
    path = _build_dir() / f"{_name()}.so"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(_name(), path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build() -> Any:
    from torch.utils.cpp_extension import load

    # The venv's own ninja (a dependency) where the venv is not on PATH.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return load(
        name=_name(),
        sources=[str(source) for source in _SOURCES],
        extra_cflags=_CFLAGS,
        extra_ldflags=["-pthread"],
        build_directory=str(_build_dir()),
        verbose=False,
    )


def _build_dir() -> Path:
    """Where the built extension is kept (`make install` builds it there once): the user's cache."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    build = base / "dukat" / "kernels"
    build.mkdir(parents=True, exist_ok=True)
    return build


def available() -> str | None:
    """None when the kernels work here, else why not."""
    try:
        kernels()
    except RuntimeError as exc:
        return str(exc)
    return None


def quantize(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float weights -> (blocks uint8 [N, K/32, 16 or 32], scales float16 [N, K/32]).

    4-bit blocks take, of a few scales around max|w| / 8, the one with the least squared error (as
    llama.cpp's quantizers do): on Gaussian weights ~8% relative error instead of ~9.4%."""
    n, k = weight.shape
    w = weight.detach().float().reshape(n, k // BLOCK, BLOCK)
    amax = w.abs().amax(-1)
    if bits == 8:
        scale = amax / 127.0
        q = (w * _inverse(scale)[..., None]).round().clamp(-127, 127)
        return q.to(torch.int8).view(torch.uint8).contiguous(), scale.to(torch.float16).contiguous()
    def candidate(top: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale = (amax / top).to(torch.float16).float()  # the scale as stored
        q = (w * _inverse(scale)[..., None]).round().clamp(-8, 7)
        return q, scale, ((q * scale[..., None] - w) ** 2).sum(-1)

    best_q, best_scale, best_err = candidate(8.0)
    for top in (7.5, 7.0, 6.5, 6.0, 5.5):
        q, scale, err = candidate(top)
        better = err < best_err
        best_q = torch.where(better[..., None], q, best_q)
        best_scale = torch.where(better, scale, best_scale)
        best_err = torch.minimum(err, best_err)
    u = (best_q + 8).to(torch.uint8)
    packed = u[..., : BLOCK // 2] | (u[..., BLOCK // 2 :] << 4)
    return packed.contiguous(), best_scale.to(torch.float16).contiguous()


def _inverse(scale: torch.Tensor) -> torch.Tensor:
    return torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))


def dequantize(blocks: torch.Tensor, scales: torch.Tensor, bits: int) -> torch.Tensor:
    """The float32 weights [N, K] the blocks stand for (rows of an embedding; wide matmuls)."""
    if bits == 4:
        values = torch.cat([(blocks & 15), (blocks >> 4)], dim=-1).to(torch.float32) - 8
    else:
        values = blocks.view(torch.int8).to(torch.float32)
    return (values * scales.float()[..., None]).reshape(blocks.shape[0], -1)


class BlockLinear(nn.Module):
    """An nn.Linear whose weight is held in blocks of `bits` (4 or 8); bias kept in float."""

    def __init__(self, linear: nn.Linear, bits: int) -> None:
        super().__init__()
        self.in_features, self.out_features, self.bits = linear.in_features, linear.out_features, bits
        blocks, scales = quantize(linear.weight, bits)
        self.register_buffer("blocks", blocks)
        self.register_buffer("scales", scales)
        bias = None if linear.bias is None else linear.bias.detach().float()
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        op = kernels()
        self._op = op.q4_matmul if bits == 4 else op.q8_matmul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        # Every row on the integer kernel, prefills included: a row's result never depends on the
        # rows beside it (batched greedy text is the text alone).
        out = self._op(x, self.blocks, self.scales, self.out_features)
        if self.bias is not None:
            out = out + self.bias
        return out.to(dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}"


class BlockEmbedding(nn.Module):
    """An embedding held in blocks (its own, or a tied LM head's): rows are dequantized as they are
    looked up. Keeps the original module's `embed_scale` (Gemma multiplies by sqrt(hidden))."""

    def __init__(
        self, embedding: nn.Embedding, blocks: torch.Tensor, scales: torch.Tensor, bits: int
    ) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = embedding.num_embeddings, embedding.embedding_dim
        self.padding_idx = embedding.padding_idx
        self.bits = bits
        self.blocks, self.scales = blocks, scales  # plain attributes when shared with the head
        scale = getattr(embedding, "embed_scale", None)
        self.embed_scale = None if scale is None else torch.as_tensor(scale, dtype=torch.float32).clone()

    @classmethod
    def sharing(cls, embedding: nn.Embedding, head: BlockLinear) -> BlockEmbedding:
        blocks, scales = head.blocks, head.scales
        assert isinstance(blocks, torch.Tensor) and isinstance(scales, torch.Tensor)
        return cls(embedding, blocks, scales, head.bits)

    @classmethod
    def owning(cls, embedding: nn.Embedding, bits: int) -> BlockEmbedding:
        blocks, scales = quantize(embedding.weight, bits)
        module = cls(embedding, blocks, scales, bits)
        del module.blocks, module.scales
        module.register_buffer("blocks", blocks)
        module.register_buffer("scales", scales)
        return module

    @property
    def weight(self) -> torch.Tensor:
        """A stand-in for code that reads `.weight` for its shape, dtype or device (no values)."""
        return torch.empty(1, 1, dtype=torch.float32).expand(self.num_embeddings, self.embedding_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        rows = dequantize(self.blocks[flat], self.scales[flat], self.bits)
        out = rows.reshape(*ids.shape, self.embedding_dim)
        if self.embed_scale is not None:
            out = out * self.embed_scale.to(out.dtype)
        return out
