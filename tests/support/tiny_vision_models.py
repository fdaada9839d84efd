"""Tiny random-weight image-text-to-text models (issue 21): Gemma 3, SmolVLM (Idefics3) and LLaVA,
each saved with its processor (image processor, image tokens) and a chat template that
renders `{"type": "image"}` content parts as its family's image marker, under their hub ids.

Shapes: text hidden 64 in 2 layers, a one-layer vision tower on 28-56 pixel images, so each folder
is about 1 MB and an image is a handful of tokens. (Qwen2.5-VL's processor needs its video
processor, which needs torchvision: not installed here.)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from msgspec import Struct

from tests.support.tiny_models import TokenizerSpec, _ensure, _init_weights, tokenizer_from_spec

# One content renderer for every template: a string as is, parts in order, images as `marker`.
_CONTENT = (
    "{%- macro content(c, marker) -%}{%- if c is string -%}{{ c }}{%- else -%}"
    "{%- for part in c -%}{%- if part['type'] == 'image' -%}{{ marker }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
)

GEMMA3_VISION = _CONTENT + (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
    "{{ '<start_of_turn>' + role + '\\n' + content(message['content'], '<start_of_image>') | trim }}"
    "{{ '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
SMOLVLM = _CONTENT + (
    "{{ '<|im_start|>' }}{% for message in messages %}"
    "{{ message['role'] | capitalize + ':' + content(message['content'], '<image>') }}"
    "{{ '<end_of_utterance>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
LLAVA = _CONTENT + (
    "{% for message in messages %}"
    "{{ ('USER: ' if message['role'] != 'assistant' else 'ASSISTANT: ') }}"
    "{{ content(message['content'], '<image>\\n') + ' ' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


class VisionModel(Struct, frozen=True, kw_only=True):
    hub_id: str
    model_type: str
    tokenizer: TokenizerSpec
    template: str
    turn_end: str


VISION_MODELS: dict[str, VisionModel] = {
    m.hub_id: m
    for m in (
        VisionModel(
            hub_id="google/gemma-3-4b-it", model_type="gemma3", template=GEMMA3_VISION,
            turn_end="<end_of_turn>",
            tokenizer=TokenizerSpec(special=("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>",
                                             "<end_of_turn>", "<start_of_image>", "<end_of_image>",
                                             "<image_soft_token>"),
                                    bos="<bos>", eos="<eos>", unk="<unk>", pad="<pad>", add_bos=True,
                                    extra=("<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                                           "<end_of_image>", "<image_soft_token>"),
                                    named=(("boi_token", "<start_of_image>"), ("eoi_token", "<end_of_image>"),
                                           ("image_token", "<image_soft_token>"))),
        ),
        VisionModel(
            hub_id="HuggingFaceTB/SmolVLM-256M-Instruct", model_type="idefics3", template=SMOLVLM,
            turn_end="<end_of_utterance>",
            tokenizer=TokenizerSpec(special=("<|endoftext|>", "<|im_start|>", "<end_of_utterance>",
                                             "<fake_token_around_image>", "<image>", "<global-img>"),
                                    bos="<|im_start|>", eos="<end_of_utterance>", pad="<|endoftext|>",
                                    extra=("<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>",
                                           "<image>", "<global-img>"),
                                    named=(("image_token", "<image>"),)),
        ),
        VisionModel(
            hub_id="llava-hf/llava-1.5-7b-hf", model_type="llava", template=LLAVA, turn_end="</s>",
            tokenizer=TokenizerSpec(special=("<unk>", "<s>", "</s>", "<image>", "<pad>"), bos="<s>",
                                    eos="</s>", unk="<unk>", pad="<pad>", add_bos=True, extra=("<image>",),
                                    named=(("image_token", "<image>"),)),
        ),
    )
}  # fmt: skip

_H, _LAYERS, _FF, _HEADS, _CTX = 64, 2, 128, 4, 512
_BUILDER_VERSION = 1


def _text(tok: Any, **extra: Any) -> dict[str, Any]:
    return {
        "vocab_size": len(tok), "hidden_size": _H, "intermediate_size": _FF, "num_hidden_layers": _LAYERS,
        "num_attention_heads": _HEADS, "num_key_value_heads": _HEADS // 2, "max_position_embeddings": _CTX,
        "tie_word_embeddings": False, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id, **extra,
    }  # fmt: skip


_TOWER = {"hidden_size": _H, "intermediate_size": _FF, "num_hidden_layers": 1, "num_attention_heads": _HEADS}


def _gemma3(tf: Any, tok: Any) -> tuple[Any, Any]:
    ids = tok.convert_tokens_to_ids
    config = tf.Gemma3Config(
        text_config=_text(tok, head_dim=_H // _HEADS, query_pre_attn_scalar=_H // _HEADS, sliding_window=16,
                          layer_types=["sliding_attention", "full_attention"], model_type="gemma3_text"),
        vision_config={**_TOWER, "image_size": 56, "patch_size": 14, "model_type": "siglip_vision_model"},
        mm_tokens_per_image=4, boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"), tie_word_embeddings=False,
    )  # fmt: skip
    images = tf.Gemma3ImageProcessorPil(size={"height": 56, "width": 56})
    return config, tf.Gemma3Processor(image_processor=images, tokenizer=tok, image_seq_length=4)


def _idefics3(tf: Any, tok: Any) -> tuple[Any, Any]:
    config = tf.Idefics3Config(
        text_config={**_text(tok), "model_type": "llama"},
        vision_config={**_TOWER, "image_size": 56, "patch_size": 14}, scale_factor=2,
        image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=False,
    )  # fmt: skip
    images = tf.Idefics3ImageProcessorPil(
        size={"longest_edge": 56}, max_image_size={"longest_edge": 56}, do_image_splitting=False
    )
    return config, tf.Idefics3Processor(image_processor=images, tokenizer=tok, image_seq_len=4)


def _llava(tf: Any, tok: Any) -> tuple[Any, Any]:
    config = tf.LlavaConfig(
        text_config={**_text(tok), "model_type": "llama"},
        vision_config={**_TOWER, "image_size": 28, "patch_size": 14, "projection_dim": _H,
                       "model_type": "clip_vision_model"},
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
        tie_word_embeddings=False,
    )  # fmt: skip
    images = tf.CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = tf.LlavaProcessor(
        image_processor=images,
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return config, processor


_BUILDERS: dict[str, Callable[[Any, Any], tuple[Any, Any]]] = {
    "gemma3": _gemma3, "idefics3": _idefics3, "llava": _llava,
}  # fmt: skip


def build_vision_model(hub_id: str, dest: Path, *, init_std: float = 0.5, seed: int = 0) -> Path:
    """Write the tiny model of `hub_id` (a key of VISION_MODELS), its tokenizer and processor."""
    import torch
    import transformers as tf

    spec = VISION_MODELS[hub_id]
    tokenizer = tokenizer_from_spec(spec.tokenizer, spec.template, context=_CTX)
    config, processor = _BUILDERS[spec.model_type](tf, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = tf.AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    _init_weights(model, init_std, seed)
    end = tokenizer.convert_tokens_to_ids(spec.turn_end)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.generation_config = tf.GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=sorted({end, tokenizer.eos_token_id} - {None}),
        pad_token_id=pad,
    )
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    processor.chat_template = spec.template
    processor.save_pretrained(dest)  # the tokenizer too
    return dest


def ensure_vision_model(hub_id: str, cache_dir: Path) -> Path:
    """The folder of `build_vision_model(hub_id)` under `cache_dir`, built once."""
    name = f"vision{_BUILDER_VERSION}-" + hub_id.replace("/", "--")
    return _ensure(cache_dir, name, {}, lambda dest: build_vision_model(hub_id, dest))
