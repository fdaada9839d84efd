"""`4bit` and `8bit` on a CPU: every linear layer (the LM head included) and the embeddings held in
blocks and run on worker/model/cpu_kernels (read its docstring for the figures that chose them).
`8bit`: all in 8-bit blocks. `4bit`: the transformer's layers in 4-bit blocks, the embeddings and
the LM head in 8-bit ones, as llama.cpp's 4-bit mixes keep them (its Q4_K_M Gemma 3 270M holds
`token_embd` in Q8_0): measured on that model at temperature 0, all-4-bit kept 1 of 6 held-out facts
where float32 and 8-bit kept 3, so the head's precision is worth its bytes.

bitsandbytes stays the seed's path on CUDA; on a CPU its layers dequantize per matmul (x0.33 and
x0.46 of float32 measured on Gemma 3 270M), so a CPU load is done in float32 and then quantized
here. Each row of a batch is computed on its own (per-row activation blocks, the same order of
sums), so a batched row gets exactly the logits it gets alone. Where the kernels cannot be built,
torch's dynamic int8 (fbgemm) serves both names, and the log says why.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from shared.errors import QuantizationError
from shared.settings import Quantization
from worker.model import cpu_kernels
from worker.model.cpu_kernels import BLOCK, BlockEmbedding, BlockLinear

log = logging.getLogger(__name__)
BITS = {"4bit": 4, "8bit": 8}
# The embeddings and the LM head, whatever the layers get (see above).
EMBEDDING_BITS = 8


def quantize_for_cpu(model: Any, quantization: Quantization) -> str:
    """Replace `model`'s layers in place; returns the kernel that runs them ("blocks" or "fbgemm")."""
    why_not = cpu_kernels.available()
    if why_not is not None:
        log.warning("%s; %s runs on torch's dynamic int8 instead", why_not, quantization)
        _dynamic_int8(model)
        _own_memory(model)
        return "fbgemm"
    bits = BITS[quantization]
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = head is not None and embeddings is not None and head.weight is embeddings.weight
    _replace_linears(model, quantization, bits, head)
    new_head = model.get_output_embeddings() if head is not None else None
    if tied and isinstance(new_head, BlockLinear) and isinstance(embeddings, nn.Embedding):
        model.set_input_embeddings(BlockEmbedding.sharing(embeddings, new_head))
    elif isinstance(embeddings, nn.Embedding) and embeddings.embedding_dim % BLOCK == 0:
        model.set_input_embeddings(BlockEmbedding.owning(embeddings, EMBEDDING_BITS))
    _own_memory(model)
    return "blocks"


def _own_memory(model: nn.Module) -> None:
    """The tensors quantization left as loaded (norms, biases, unquantized layers) copied into memory
    of their own: loaded from safetensors they are views of the file's memory map, and any one of
    them keeps the whole map resident (Gemma 3 270M 4bit: worker RSS 2.0 -> 1.0 GB)."""
    for module in model.modules():
        for param in module.parameters(recurse=False):
            param.data = param.data.clone()
        for name, buffer in list(module.named_buffers(recurse=False)):
            if buffer is not None and name not in ("blocks", "scales"):  # the kernels' own, made here
                setattr(module, name, buffer.clone())


def _replace_linears(model: Any, quantization: Quantization, bits: int, head: nn.Module | None) -> None:
    """Every plain linear layer into blocks (the head at EMBEDDING_BITS). Like bitsandbytes, subclasses
    (Falcon's FalconLinear) are left alone, and a model with no other layer to quantize is an error;
    so is a layer whose inputs do not fill whole blocks (found here, not at the first request)."""
    from transformers.pytorch_utils import Conv1D

    found = [
        (parent, name, child, linear)
        for parent in list(model.modules())
        for name, child in list(parent.named_children())
        if (linear := _as_linear(child, Conv1D)) is not None
    ]
    layers = [f for f in found if f[2] is not head]
    if not layers:
        raise QuantizationError(
            f"{quantization} quantization found no layer to quantize in this {model.config.model_type} "
            '(only plain linear layers are quantized); load it with quantization "none"',
            param="quantization",
        )
    bad = [f"{name} ({linear.in_features}->{linear.out_features})" for _, name, _, linear in layers
           if linear.in_features % BLOCK]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise QuantizationError(
            f"{quantization} quantization on a CPU needs every linear layer's in_features to be a multiple "
            f'of {BLOCK}; this model has {shown}. Use quantization "none"',
            param="quantization",
        )
    for parent, name, child, linear in found:
        if linear.in_features % BLOCK == 0:
            setattr(parent, name, BlockLinear(linear, EMBEDDING_BITS if child is head else bits))


def _as_linear(module: nn.Module, conv1d: type) -> nn.Linear | None:
    """`module` as an nn.Linear (GPT-2's Conv1D holds the transposed weight), or None."""
    if type(module) is nn.Linear:
        return module
    if isinstance(module, conv1d):
        weight: torch.Tensor = module.weight  # type: ignore[assignment]
        bias: torch.Tensor | None = module.bias  # type: ignore[assignment]
        linear = nn.Linear(weight.shape[0], weight.shape[1], bias=bias is not None)
        linear.weight.data = weight.detach().t().contiguous()
        if bias is not None:
            linear.bias.data = bias.detach()
        return linear
    return None


def _dynamic_int8(model: nn.Module) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
