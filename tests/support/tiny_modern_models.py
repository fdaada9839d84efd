"""Tiny random-weight models of this year's architectures, each with its family's chat template and
turn tokens, saved under the hub ids people download them by (issue 21).

None of these is one of the seed's ten families: Dukat serves them with no config entry, prompted
through their chat templates. Shapes are tiny (hidden 64, 2 layers) and every Linear's in_features
a multiple of 64, as in tests/support/tiny_models.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from msgspec import Struct

from tests.support import tiny_modern_templates as templates
from tests.support.tiny_models import TokenizerSpec, _ensure, _init_weights, tokenizer_from_spec

_CHATML_TOK = TokenizerSpec(
    # As in Qwen's tokenizers, <think> and <tool_call> are not special: replies keep them as text.
    special=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
    eos="<|im_end|>", pad="<|endoftext|>", extra=("<|im_start|>", "<|im_end|>"),
)  # fmt: skip


class ModernModel(Struct, frozen=True, kw_only=True):
    """One architecture: its hub id, transformers model_type, tokenizer, template and turn end."""

    hub_id: str
    model_type: str
    tokenizer: TokenizerSpec
    template: str
    turn_end: str  # the token that ends the assistant's turn (an end of sequence for generation)
    vision: bool = False  # an image-text-to-text checkpoint


MODERN_MODELS: dict[str, ModernModel] = {
    m.hub_id: m
    for m in (
        ModernModel(hub_id="Qwen/Qwen2.5-0.5B-Instruct", model_type="qwen2", tokenizer=_CHATML_TOK,
                    template=templates.CHATML, turn_end="<|im_end|>"),
        ModernModel(hub_id="Qwen/Qwen3-0.6B", model_type="qwen3", tokenizer=_CHATML_TOK,
                    template=templates.QWEN3, turn_end="<|im_end|>"),
        ModernModel(hub_id="Qwen/Qwen3-30B-A3B", model_type="qwen3_moe", tokenizer=_CHATML_TOK,
                    template=templates.QWEN3, turn_end="<|im_end|>"),
        ModernModel(
            hub_id="microsoft/Phi-4-mini-instruct", model_type="phi3",
            tokenizer=TokenizerSpec(special=("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>",
                                             "<|end|>"),
                                    eos="<|endoftext|>", pad="<|endoftext|>",
                                    extra=("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")),
            template=templates.PHI4, turn_end="<|end|>",
        ),
        ModernModel(hub_id="HuggingFaceTB/SmolLM3-3B", model_type="smollm3", tokenizer=_CHATML_TOK,
                    template=templates.QWEN3, turn_end="<|im_end|>"),
        ModernModel(
            hub_id="ibm-granite/granite-3.3-2b-instruct", model_type="granite",
            tokenizer=TokenizerSpec(special=("<|end_of_text|>", "<|start_of_role|>", "<|end_of_role|>"),
                                    eos="<|end_of_text|>", pad="<|end_of_text|>",
                                    extra=("<|start_of_role|>", "<|end_of_role|>")),
            template=templates.GRANITE, turn_end="<|end_of_text|>",
        ),
        ModernModel(
            hub_id="allenai/OLMo-2-0425-1B-Instruct", model_type="olmo2",
            tokenizer=TokenizerSpec(special=("<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>",
                                             "<|assistant|>"),
                                    bos="<|endoftext|>", eos="<|endoftext|>", pad="<|pad|>",
                                    extra=("<|system|>", "<|user|>", "<|assistant|>")),
            template=templates.OLMO2, turn_end="<|endoftext|>",
        ),
        ModernModel(
            hub_id="google/gemma-3-4b-it", model_type="gemma3", vision=True,
            tokenizer=TokenizerSpec(special=("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>",
                                             "<end_of_turn>", "<start_of_image>", "<end_of_image>",
                                             "<image_soft_token>"),
                                    bos="<bos>", eos="<eos>", unk="<unk>", pad="<pad>", add_bos=True,
                                    extra=("<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                                           "<end_of_image>", "<image_soft_token>")),
            template=templates.GEMMA3, turn_end="<end_of_turn>",
        ),
        ModernModel(
            hub_id="openai/gpt-oss-20b", model_type="gpt_oss",
            tokenizer=TokenizerSpec(special=("<|endoftext|>", "<|start|>", "<|end|>", "<|message|>",
                                             "<|channel|>", "<|return|>", "<|call|>"),
                                    eos="<|return|>", pad="<|endoftext|>",
                                    extra=("<|start|>", "<|end|>", "<|message|>", "<|channel|>",
                                           "<|call|>")),
            template=templates.GPT_OSS, turn_end="<|return|>",
        ),
        ModernModel(
            hub_id="LiquidAI/LFM2-350M", model_type="lfm2",
            tokenizer=TokenizerSpec(special=("<|pad|>", "<|startoftext|>", "<|im_start|>", "<|im_end|>"),
                                    bos="<|startoftext|>", eos="<|im_end|>", pad="<|pad|>",
                                    extra=("<|im_start|>", "<|im_end|>")),
            template=templates.LFM2, turn_end="<|im_end|>",
        ),
        ModernModel(
            hub_id="mistralai/Ministral-3-3B-Instruct", model_type="mistral3", vision=True,
            tokenizer=TokenizerSpec(special=("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]",
                                             "[/SYSTEM_PROMPT]", "[IMG]", "[IMG_BREAK]", "[IMG_END]"),
                                    bos="<s>", eos="</s>", unk="<unk>", add_bos=True,
                                    extra=("[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
                                           "[IMG]", "[IMG_BREAK]", "[IMG_END]")),
            template=templates.MINISTRAL3, turn_end="</s>",
        ),
        ModernModel(
            hub_id="deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", model_type="qwen2",
            tokenizer=TokenizerSpec(special=("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>",
                                             "<｜Assistant｜>"),
                                    bos="<｜begin▁of▁sentence｜>", eos="<｜end▁of▁sentence｜>",
                                    pad="<｜end▁of▁sentence｜>", add_bos=True,
                                    extra=("<｜User｜>", "<｜Assistant｜>")),
            template=templates.DEEPSEEK_R1, turn_end="<｜end▁of▁sentence｜>",
        ),
    )
}  # fmt: skip

_H, _LAYERS, _FF, _HEADS, _CTX = 64, 2, 128, 4, 512
# Bump when the built models change, so cached folders are rebuilt.
_BUILDER_VERSION = 3


def _text_kwargs(tokenizer: Any) -> dict[str, Any]:
    return {
        "vocab_size": len(tokenizer), "hidden_size": _H, "intermediate_size": _FF,
        "num_hidden_layers": _LAYERS, "num_attention_heads": _HEADS, "num_key_value_heads": _HEADS // 2,
        "max_position_embeddings": _CTX, "tie_word_embeddings": False,
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }  # fmt: skip


_VISION = {"hidden_size": _H, "intermediate_size": _FF, "num_hidden_layers": 1, "num_attention_heads": _HEADS,
           "image_size": 56, "patch_size": 14}  # fmt: skip


def _gemma3(tf: Any, tok: Any, kw: dict[str, Any]) -> Any:
    text = {**kw, "head_dim": _H // _HEADS, "query_pre_attn_scalar": _H // _HEADS, "sliding_window": 16,
            "layer_types": ["sliding_attention", "full_attention"], "model_type": "gemma3_text"}
    vision = {**_VISION, "model_type": "siglip_vision_model"}
    ids = tok.convert_tokens_to_ids
    return tf.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                           boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"),
                           image_token_index=ids("<image_soft_token>"),
                           tie_word_embeddings=False)  # fmt: skip


def _mistral3(tf: Any, tok: Any, kw: dict[str, Any]) -> Any:
    text = {**kw, "head_dim": _H // _HEADS, "model_type": "ministral3"}
    vision = {**_VISION, "head_dim": _H // _HEADS, "model_type": "pixtral"}
    return tf.Mistral3Config(text_config=text, vision_config=vision, spatial_merge_size=2,
                             image_token_index=tok.convert_tokens_to_ids("[IMG]"), tie_word_embeddings=False)


_CONFIGS: dict[str, Callable[[Any, Any, dict[str, Any]], Any]] = {
    "qwen2": lambda tf, tok, kw: tf.Qwen2Config(**kw),
    "qwen3": lambda tf, tok, kw: tf.Qwen3Config(**kw, head_dim=_H // _HEADS),
    "qwen3_moe": lambda tf, tok, kw: tf.Qwen3MoeConfig(**kw, head_dim=_H // _HEADS, num_experts=4,
                                                       num_experts_per_tok=2, moe_intermediate_size=64),
    "phi3": lambda tf, tok, kw: tf.Phi3Config(**kw),
    "smollm3": lambda tf, tok, kw: tf.SmolLM3Config(**kw),
    "granite": lambda tf, tok, kw: tf.GraniteConfig(**kw),
    "olmo2": lambda tf, tok, kw: tf.Olmo2Config(**kw),
    "gpt_oss": lambda tf, tok, kw: tf.GptOssConfig(
        **{**kw, "intermediate_size": 64}, head_dim=_H // _HEADS, num_local_experts=4, num_experts_per_tok=2,
        sliding_window=16, layer_types=["sliding_attention", "full_attention"]),
    "lfm2": lambda tf, tok, kw: tf.Lfm2Config(**kw, layer_types=["conv", "full_attention"]),
    "gemma3": _gemma3,
    "mistral3": _mistral3,
}  # fmt: skip


def build_modern_model(hub_id: str, dest: Path, *, init_std: float = 0.5, seed: int = 0) -> Path:
    """Write the tiny model of `hub_id` (a key of MODERN_MODELS) as a `save_pretrained` folder."""
    import torch
    import transformers as tf

    spec = MODERN_MODELS[hub_id]
    tokenizer = tokenizer_from_spec(spec.tokenizer, spec.template, context=_CTX)
    config = _CONFIGS[spec.model_type](tf, tokenizer, _text_kwargs(tokenizer))
    auto = tf.AutoModelForImageTextToText if spec.vision else tf.AutoModelForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = auto.from_config(config, dtype=torch.float32)
    _init_weights(model, init_std, seed)
    end = tokenizer.convert_tokens_to_ids(spec.turn_end)
    eos = sorted({end, tokenizer.eos_token_id} - {None})
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.generation_config = tf.GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos,
                                                  pad_token_id=pad)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def ensure_modern_model(hub_id: str, cache_dir: Path) -> Path:
    """The folder of `build_modern_model(hub_id)` under `cache_dir`, built once."""
    name = f"modern{_BUILDER_VERSION}-" + hub_id.replace("/", "--")
    return _ensure(cache_dir, name, {}, lambda dest: build_modern_model(hub_id, dest))
