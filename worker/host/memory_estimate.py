"""How much memory a model will take once loaded, from its files alone (no torch, no load).

parameters × bytes per weight for the quantization and device
+ a KV-cache budget (layers × 2 × kv width × bytes × budget tokens)
+ overhead (the worker process or CUDA context, plus a share of the weights for activations).

Parameters come from the safetensors headers and GGUF tensor lists (shapes only, cached per file by
size and mtime: `TensorSizes`); other weight files fall back to their size. An estimate errs high:
placing a model where it then OOMs costs more than leaving a little room unused.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from msgspec import Struct

from shared import gguf
from shared.errors import DukatError
from shared.host_api import device_kind
from shared.settings import Quantization
from worker.host.safetensors_header import read_header

MIB = 1 << 20
# A model worker's process before weights: the interpreter, torch and transformers (measured
# ~300 MiB RSS on CPU); on a GPU the CUDA context and allocator reserve about as much again.
_BASE_OVERHEAD = {"cpu": 384 * MIB, "cuda": 640 * MIB}
_ACTIVATION_SHARE = 0.10
# Bytes per stored element, by safetensors dtype.
_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
# Tensors bitsandbytes leaves in the compute dtype (embeddings, output head); the rest is quantized.
_UNQUANTIZED = ("embed", "wte", "wpe", "lm_head", "shared", "word_embeddings", "norm", "ln_", "bias")


class MemoryEstimate(Struct, kw_only=True, frozen=True):
    parameters: int
    weights_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int
    total_bytes: int


class TensorSizes:
    """The (tensor name, element count) lists of weight files, each read once and kept while the
    file's size and mtime stay the same (a host estimates a model at every placement)."""

    def __init__(self) -> None:
        self._files: dict[Path, tuple[tuple[int, int], list[tuple[str, int]]]] = {}

    def of(self, file: Path) -> list[tuple[str, int]]:
        try:
            st = file.stat()
        except OSError:
            return []
        stamp = (st.st_size, st.st_mtime_ns)
        known = self._files.get(file)
        if known is not None and known[0] == stamp:
            return known[1]
        sizes = _gguf_shapes(file) if file.suffix == gguf.SUFFIX else _safetensors_shapes(file)
        self._files[file] = (stamp, sizes)
        return sizes


def estimate_memory(
    path: Path, quantization: Quantization, device: str, *, kv_tokens: int, sizes: TensorSizes | None = None
) -> MemoryEstimate:
    """The estimate for loading the model folder `path` with `quantization` on `device`. Blocking
    (file reads): the host calls it from a thread."""
    config = _config(path)
    kind = device_kind(device)
    compute_bytes = 4 if kind == "cpu" else 2  # the engine loads fp32 on CPU, bf16/fp16 on GPUs
    quantized, plain = _parameters(path, sizes or TensorSizes())
    # CPU: 32-weight blocks with a float16 scale (worker/model/cpu_kernels); CUDA: bitsandbytes.
    per_weight = {
        "none": compute_bytes,
        "8bit": 1.0 + 2 / 32 if kind == "cpu" else 1.0,
        "4bit": 0.5 + 2 / 32 if kind == "cpu" else 0.5 + 4 / 64,
    }[quantization]
    if quantization == "none":
        quantized, plain = 0, quantized + plain
    weights = int(quantized * per_weight + plain * compute_bytes)
    kv = _kv_bytes(config, compute_bytes, kv_tokens)
    overhead = _BASE_OVERHEAD[kind] + int(weights * _ACTIVATION_SHARE)
    return MemoryEstimate(
        parameters=quantized + plain,
        weights_bytes=weights,
        kv_cache_bytes=kv,
        overhead_bytes=overhead,
        total_bytes=weights + kv + overhead,
    )


def _config(path: Path) -> dict[str, object]:
    try:
        data = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _parameters(path: Path, sizes: TensorSizes) -> tuple[int, int]:
    """(quantizable, kept in compute dtype) parameter counts of the folder's weights (or of a .gguf
    file: transformers dequantizes GGUF weights on load, so they count like any others)."""
    quantized = plain = 0
    ggufs = sorted(path.glob("*.gguf")) if path.is_dir() else [path]
    shapes = [s for file in sorted(path.glob("*.safetensors")) for s in sizes.of(file)]
    if not shapes:
        shapes = [s for file in ggufs for s in sizes.of(file)]
    for name, count in shapes:
        if any(part in name for part in _UNQUANTIZED):
            plain += count
        else:
            quantized += count
    if quantized or plain:
        return quantized, plain
    return _fallback(path)


def _fallback(path: Path) -> tuple[int, int]:
    # .bin / .pt / .gguf: no cheap shape list; assume fp32 storage (an over-estimate for fp16 files,
    # and GGUF weights are dequantized on load anyway, so their in-memory size is larger still).
    if path.is_file():
        return path.stat().st_size * 2, 0
    size = sum(f.stat().st_size for p in ("*.bin", "*.pt", "*.pth") for f in path.glob(p))
    gguf = sum(f.stat().st_size for f in path.glob("*.gguf"))
    return size // 4 + gguf * 2, 0


def _gguf_shapes(file: Path) -> list[tuple[str, int]]:
    """(tensor name, element count) of a .gguf file's tensors (its tensor list; the data is not read)."""
    try:
        return gguf.tensor_sizes(file)
    except DukatError:  # not a GGUF file we can read: the size stands in
        return []


def _safetensors_shapes(file: Path) -> list[tuple[str, int]]:
    """(tensor name, element count) of each tensor in a safetensors file's header."""
    out = []
    for name, meta in (read_header(file) or {}).items():
        if isinstance(meta, dict) and meta.get("dtype") in _DTYPE_BYTES:
            out.append((name, math.prod(meta.get("shape") or [1])))
    return out


def _first_int(config: dict[str, object], *keys: str) -> int:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return 0


def _kv_bytes(config: dict[str, object], compute_bytes: int, kv_tokens: int) -> int:
    """Keys and values of every layer for `kv_tokens` tokens in all (the batch's budget)."""
    text = config.get("text_config")
    if isinstance(text, dict):  # multimodal configs keep the language model's facts there
        config = {**config, **text}
    layers = _first_int(config, "num_hidden_layers", "n_layer", "num_layers")
    hidden = _first_int(config, "hidden_size", "n_embd", "d_model")
    heads = _first_int(config, "num_attention_heads", "n_head", "num_heads")
    kv_heads = _first_int(config, "num_key_value_heads", "multi_query_group_num") or heads
    head_dim = _first_int(config, "head_dim", "d_kv") or (hidden // heads if heads else 0)
    return layers * 2 * kv_heads * head_dim * compute_bytes * kv_tokens
