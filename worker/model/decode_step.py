"""One decode step of a Llama-family decoder (Llama, Mistral, Qwen 2/3, Gemma 1/3) written as the
few calls it is, on transformers' own cache layers and the model's own weights.

Why not the model's forward: on a CPU a decode step of a small model is bound by per-call overhead,
not arithmetic. Gemma 3 270M `4bit` took 29-35 ms a step in-process, while its weights (layers
4.3 ms, 8-bit LM head 10.4 ms, timed alone) were half of that; the rest was ~1,100 small ops per
token (RMSNorm alone is 8 ops, run 109 times) and the masks, rotary tables and output records built
in Python. Here a layer is ~12 calls: q/k/v and gate/up each one matmul (weights concatenated, the
modules' own left as views of them), and on a float32 CPU model the norms, the residual adds, q/k
norm with rotary, one token's attention and the gated activation each one call into
cpu_kernels/layer_ops.cpp (`_TorchOps` holds the same ops in torch for other devices). Measured on
that model, 1 stream, in-process: 35.4 -> 17.7 ms a step with the model in the main thread.

The cache is the model's own, its layers appended to in place (kv_append.py), so prefills, joins,
trims and the prefix cache keep using the model's forward and the same cache. The step is taken
only for the model types in FAMILIES whose modules have the expected parts (the norm style probed
on a vector, not guessed), and only after `kv_cache.checked_decode_step` saw it give the forward's
logits at load.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from worker.model import cpu_kernels
from worker.model.cpu_kernels import BlockLinear
from worker.model.kv_append import Appender
from worker.model.lora import Adapters, Rows

Linear = Callable[[torch.Tensor], torch.Tensor]
Attend = Callable[["_Layer", torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
_NONE = torch.empty(0)  # "no such norm" to the kernels


class _TorchOps:
    """The layer ops of cpu_kernels/layer_ops.cpp in tensor ops (other devices and dtypes, or no
    compiler), with the same signatures."""

    @staticmethod
    def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        return F.rms_norm(x, (w.shape[0],), w, eps)

    @staticmethod
    def residual_norm(
        h: torch.Tensor, out: torch.Tensor, post_w: torch.Tensor, next_w: torch.Tensor, eps: float
    ) -> list[torch.Tensor]:
        total = h + (F.rms_norm(out, (post_w.shape[0],), post_w, eps) if post_w.numel() else out)
        return [total, F.rms_norm(total, (next_w.shape[0],), next_w, eps)]

    @staticmethod
    def qkv_heads(
        qkv: torch.Tensor, q_w: torch.Tensor, k_w: torch.Tensor, eps: float,
        cos: torch.Tensor, sin: torch.Tensor, hq: int, hkv: int, d: int,
    ) -> list[torch.Tensor]:
        rows = qkv.shape[0]
        q, k, v = qkv.view(rows, hq + 2 * hkv, 1, d).split([hq, hkv, hkv], dim=1)
        if q_w.numel():
            q = F.rms_norm(q, (d,), q_w, eps)
        if k_w.numel():
            k = F.rms_norm(k, (d,), k_w, eps)
        cos, sin = cos[:, None, None], sin[:, None, None]
        return [q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin, v.contiguous()]

    @staticmethod
    def decode_attention(
        q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, scale: float
    ) -> torch.Tensor:
        # A sliding layer returns the timeline's last columns: the mask's last ones.
        sees = mask.bool()[:, None, None, -keys.shape[2] :] if mask.numel() else None
        gqa = keys.shape[1] != q.shape[1]
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=sees, scale=scale, enable_gqa=gqa)

    @staticmethod
    def gated(gate_up: torch.Tensor, kind: int) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        act = F.silu(gate) if kind == 0 else F.gelu(gate, approximate="tanh" if kind == 1 else "none")
        return act * up


class _Layer:
    """What a step needs of one decoder layer: fused matmuls, effective norm weights, shapes."""

    def __init__(self, layer: Any, index: int, config: Any, names: dict[Any, str]) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.index = index
        # Each call's modules as (name, output width): what LoRA adapters add to (worker/model/lora.py).
        self.parts = {
            call: tuple((names[m], int(m.out_features)) for m in modules)
            for call, modules in (
                ("qkv", [attn.q_proj, attn.k_proj, attn.v_proj]), ("o", [attn.o_proj]),
                ("gate_up", [mlp.gate_proj, mlp.up_proj]), ("down", [mlp.down_proj]),
            )
        }
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(attn.head_dim)
        self.scaling = float(attn.scaling)
        self.layer_type = getattr(attn, "layer_type", None) or "full_attention"
        self.qkv = _fused([attn.q_proj, attn.k_proj, attn.v_proj])
        self.o = _matmul(attn.o_proj)
        self.gate_up = _fused([mlp.gate_proj, mlp.up_proj])
        self.act = _act_kind(mlp.act_fn)
        self.down = _matmul(mlp.down_proj)
        self.norm_in = _norm_weight(layer.input_layernorm)
        self.q_norm = _norm_weight(getattr(attn, "q_norm", None))
        self.k_norm = _norm_weight(getattr(attn, "k_norm", None))
        # Gemma 2/3 norm each sublayer's output too ("sandwich"); Llama's post-attention norm is
        # the MLP's input norm.
        post_attn = _norm_weight(layer.post_attention_layernorm)
        pre_ff = _norm_weight(getattr(layer, "pre_feedforward_layernorm", None))
        self.post_attn, self.pre_ff = (post_attn, pre_ff) if pre_ff.numel() else (_NONE, post_attn)
        self.post_ff = _norm_weight(getattr(layer, "post_feedforward_layernorm", None))


class DecodeStep:
    """`__call__(ids [rows, 1], positions [rows], mask [rows, width] or None, cache)` -> the next
    logits [rows, vocab], the cache's layers updated as the model's forward would."""

    def __init__(self, model: Any) -> None:
        inner, config = model.model, model.config
        self._embed = model.get_input_embeddings()
        names = {module: name for name, module in model.named_modules()}
        self._layers = [_Layer(layer, i, config, names) for i, layer in enumerate(inner.layers)]
        self._final = _norm_weight(inner.norm)
        self._eps = _eps(inner.norm)
        norms = [m for m in model.modules() if m is not inner.norm and _norm_like(m)]
        if any(_eps(m) != self._eps for m in norms):
            raise _Unsupported("its norms differ in epsilon")
        self._head = _matmul(model.get_output_embeddings())
        self._softcap = getattr(config, "final_logit_softcapping", None)
        self._rotary = inner.rotary_emb
        self._rotary_typed = "layer_type" in inspect.signature(self._rotary.forward).parameters
        self._layer_types = sorted({layer.layer_type for layer in self._layers})
        self._ops = _ops_for(model)
        self._append = Appender()
        self.adapters: Adapters | None = None  # LoRA rows (the scheduler's, where a worker serves them)

    def __call__(
        self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None, cache: Any
    ) -> torch.Tensor:
        if self.adapters is None:
            return self._step(ids, positions, mask, cache, None)
        with self.adapters.wrappers_off() as rows:  # the step adds each row's deltas itself
            return self._step(ids, positions, mask, cache, rows)

    def _step(
        self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None, cache: Any,
        lora: Rows | None,
    ) -> torch.Tensor:
        ops, pads = self._ops, _NONE if mask is None else mask.contiguous()

        def attend(layer: _Layer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            keys, values = self._append(cache.layers[layer.index], k, v)
            return ops.decode_attention(q, keys, values, pads, layer.scaling)

        return self._layers_pass(ids, positions, attend, lora)

    def _layers_pass(self, ids: torch.Tensor, positions: torch.Tensor, attend: Attend, lora: Rows | None
                     ) -> torch.Tensor:
        """The step's logits, `attend(layer, q, k, v)` storing each layer's new keys and values and
        returning its attention output [rows, heads, 1, dim] (the cache's way is the caller's)."""
        ops, eps, rows = self._ops, self._eps, ids.shape[0]
        adapters = self.adapters if lora is not None else None

        def run(layer: _Layer, call: str, linear: Linear, x: torch.Tensor) -> torch.Tensor:
            out = linear(x)
            if adapters is not None:
                adapters.add(lora, out, layer.parts[call], x)
            return out

        h = self._embed(ids).reshape(rows, -1).contiguous()
        tables = self._tables(h, positions[:, None])
        x = ops.rms_norm(h, self._layers[0].norm_in, eps)
        for i, layer in enumerate(self._layers):
            cos, sin = tables[layer.layer_type]
            qkv = run(layer, "qkv", layer.qkv, x)
            q, k, v = ops.qkv_heads(qkv, layer.q_norm, layer.k_norm, eps, cos, sin,
                                    layer.heads, layer.kv_heads, layer.head_dim)
            out = run(layer, "o", layer.o, attend(layer, q, k, v).reshape(rows, layer.heads * layer.head_dim))
            h, x = ops.residual_norm(h, out, layer.post_attn, layer.pre_ff, eps)
            gated = ops.gated(run(layer, "gate_up", layer.gate_up, x), layer.act)
            out = run(layer, "down", layer.down, gated)
            following = self._layers[i + 1].norm_in if i + 1 < len(self._layers) else self._final
            h, x = ops.residual_norm(h, out, layer.post_ff, following, eps)
        logits = self._head(x)
        if self._softcap is not None:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits

    def settle(self, cache: Any) -> None:
        """Nothing to do: this step's appends are the cache's own (a graph step's are not)."""

    def _tables(self, h: torch.Tensor, positions: torch.Tensor) -> dict[str, tuple[torch.Tensor, ...]]:
        """Rotary cos/sin per layer type, [rows, head_dim] (the model's own rotary module)."""
        tables = {}
        for kind in self._layer_types:
            pair = self._rotary(h, positions, kind) if self._rotary_typed else self._rotary(h, positions)
            tables[kind] = tuple(t.reshape(h.shape[0], -1).contiguous() for t in pair)
        return tables


def decode_step_for(model: Any) -> tuple[DecodeStep | None, str | None]:
    """A DecodeStep for `model`, or (None, why not)."""
    why = _unsupported(model)
    if why is not None:
        return None, why
    try:
        return DecodeStep(model), None
    except _Unsupported as exc:
        return None, str(exc)


# transformers model types whose decoder layers are exactly what DecodeStep computes (others
# of the same shape differ in details it does not model: Granite's multipliers, SmolLM3's NoPE
# layers, OLMo 2's norm placement).
FAMILIES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma3_text"})


def _unsupported(model: Any) -> str | None:
    config = model.config
    if getattr(config, "model_type", None) not in FAMILIES:
        return f"{getattr(config, 'model_type', 'this')} models decode on their own forward"
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if getattr(config, "is_encoder_decoder", False) or layers is None or len(layers) == 0:
        return "not a Llama-style decoder"
    if not all(hasattr(inner, name) for name in ("norm", "rotary_emb")):
        return "not a Llama-style decoder"
    for layer in layers:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        needed = [(attn, ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling")),
                  (mlp, ("gate_proj", "up_proj", "down_proj", "act_fn")),
                  (layer, ("input_layernorm", "post_attention_layernorm"))]
        if any(part is None or not all(hasattr(part, n) for n in names) for part, names in needed):
            return "not a Llama-style decoder"
        if getattr(attn, "attn_logit_softcapping", None) is not None:
            return "its attention logits are softcapped"
    if model.get_output_embeddings() is None:
        return "it has no LM head"
    return None


class _Unsupported(Exception):
    pass


def _ops_for(model: Any) -> Any:
    """The compiled layer ops for a float32 model on the CPU where they are built, else _TorchOps."""
    param = next(model.parameters())
    if param.device.type == "cpu" and param.dtype == torch.float32 and cpu_kernels.available() is None:
        return cpu_kernels.kernels()
    return _TorchOps


def _norm_weight(module: Any) -> torch.Tensor:
    """`module`'s effective RMSNorm weight (w, or Gemma's 1 + w), found by running it on a probe
    vector so that a norm that is neither is refused rather than guessed; _NONE for no module."""
    if module is None:
        return _NONE
    weight = getattr(module, "weight", None)
    eps = _eps(module)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1:
        raise _Unsupported(f"its norm {type(module).__name__} is not an RMSNorm")
    probe = torch.linspace(-2.0, 3.0, weight.shape[0], dtype=weight.dtype, device=weight.device)[None]
    with torch.inference_mode():
        want = module(probe).float()
        for effective in (weight.detach().float(), 1.0 + weight.detach().float()):
            got = F.rms_norm(probe.float(), (weight.shape[0],), effective, eps)
            if torch.allclose(got, want, rtol=1e-4, atol=1e-5):
                return effective.to(weight.dtype).contiguous()
    raise _Unsupported(f"its norm {type(module).__name__} is neither w * x nor (1 + w) * x over RMS(x)")


def _norm_like(module: nn.Module) -> bool:
    return type(module).__name__.endswith("RMSNorm")


def _eps(module: nn.Module) -> float:
    eps = getattr(module, "eps", None) or getattr(module, "variance_epsilon", None)
    if eps is None:
        raise _Unsupported(f"its norm {type(module).__name__} has no epsilon")
    return float(eps)


def _act_kind(act: Callable[[torch.Tensor], torch.Tensor]) -> int:
    """The MLP's activation as the kernels number it: 0 SiLU, 1 GELU (tanh), 2 GELU (erf)."""
    probe = torch.linspace(-6.0, 6.0, 97)
    with torch.inference_mode():
        got = act(probe)
        for kind, want in enumerate((F.silu(probe), F.gelu(probe, approximate="tanh"), F.gelu(probe))):
            if torch.allclose(got.float(), want, rtol=1e-5, atol=1e-6):
                return kind
    raise _Unsupported(f"its activation {type(act).__name__} is not SiLU or GELU")


def _matmul(module: nn.Module) -> Linear:
    """A linear layer as one call: a BlockLinear's kernel directly (its input is float32 already)."""
    if isinstance(module, BlockLinear):
        return _fuse_blocks([module])
    return module


def _fused(linears: list[nn.Module]) -> Linear:
    """One matmul for linears that read the same input: their weights concatenated by output rows
    (block-quantized or float), the modules' own weights then views of the concatenation so the
    memory is not doubled. Mixed kinds stay separate calls."""
    if all(isinstance(m, BlockLinear) for m in linears) and len({m.bits for m in linears}) == 1:
        return _fuse_blocks(linears)
    if all(type(m) is nn.Linear for m in linears):
        return _fuse_floats(linears)
    return lambda x: torch.cat([m(x) for m in linears], dim=-1)


def _fuse_blocks(linears: list[Any]) -> Linear:
    if len(linears) == 1:  # its own tensors: a copy would unshare a tied head's blocks from the embedding
        [m] = linears
        blocks, scales, bias, total = m.blocks, m.scales, m.bias, m.out_features
    else:
        blocks = torch.cat([m.blocks for m in linears])
        scales = torch.cat([m.scales for m in linears])
        biases = [m.bias if m.bias is not None else torch.zeros(m.out_features) for m in linears]
        bias = torch.cat(biases) if any(m.bias is not None for m in linears) else None
        total = 0
        for m in linears:
            rows = slice(total, total + m.out_features)
            m.blocks, m.scales = blocks[rows], scales[rows]
            total += m.out_features
    op = linears[0]._op

    def run(x: torch.Tensor) -> torch.Tensor:
        out = op(x, blocks, scales, total)
        return out if bias is None else out + bias

    return run


def _fuse_floats(linears: list[Any]) -> Linear:
    weight = torch.cat([m.weight.detach() for m in linears])
    has_bias = any(m.bias is not None for m in linears)
    bias = torch.cat([m.bias.detach() if m.bias is not None else weight.new_zeros(m.out_features)
                      for m in linears]) if has_bias else None
    start = 0
    for m in linears:
        end = start + m.out_features
        m.weight.data = weight[start:end]
        start = end
    return lambda x: F.linear(x, weight, bias)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
