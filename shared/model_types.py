"""Model types: what each family is for, how its prompts look and how its output is cleaned.

The type of a model is inferred from its id (the seed's rule: `TinyLlama/...` is TinyLlama,
`mistralai/...` is Mistral, ...), then from the `model_type` of its `config.json`; a `model_type`
in the Dukat config file overrides both. The seed's ten families keep their own rules; any other
architecture gets a generic type chosen from its files (`type_from_architecture`): a causal LM, an
image-text-to-text checkpoint, an encoder-decoder or an embedding model, prompted through its
tokenizer's chat template. Whether transformers can load it is the model worker's answer
(worker/model/architectures.py), where transformers is imported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from msgspec import Struct

from shared.errors import UnsupportedModelTypeError

CROSS_ENCODER = "cross-encoder"
# The keys of a transformers config.json that hold the longest sequence a model takes (first found wins):
# the model worker sizes requests by it, the host shows it.
CONTEXT_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


class Task(StrEnum):
    CHAT = "chat"  # causal LM: chat and text completions
    SEQ2SEQ = "seq2seq"  # encoder-decoder generation (T5)
    EMBEDDING = "embedding"  # pooled sentence vectors (BERT, RoBERTa, Qwen3-Embedding)
    RERANK = "rerank"  # cross-encoder: one relevance score per (query, document) pair
    VISION = "vision"  # image-text-to-text: chat with images (Gemma 3, Qwen2.5-VL, Mistral 3)


class PromptFormat(StrEnum):
    INST = "inst"  # Mistral / Llama-2 Instruct: <s>[INST] {system}\n\n{prompt} [/INST]
    ZEPHYR = "zephyr"  # TinyLlama chat: <|system|>\n{system}\n<|user|>\n{prompt}\n<|assistant|>
    GEMMA = "gemma"  # <start_of_turn>user\n...<end_of_turn>\n<start_of_turn>model\n
    PLAIN = "plain"  # base models: "System: ...\nUser: ...\nAssistant:"
    # The tokenizer's chat template, and nothing else: no implied stops, no role echoes (its turn
    # end is an end of sequence). A model of such a type without a template is prompted in PLAIN.
    TEMPLATE = "template"


class ModelType(Struct, frozen=True, kw_only=True):
    """A family of models; the defaults are a causal LM prompted in the plain format."""

    name: str  # the value users write in the config file's `model_type`
    task: Task = Task.CHAT
    prompt_format: PromptFormat = PromptFormat.PLAIN
    # Strings the model tends to echo at the end of a reply, removed by cleaning.
    trailing_markers: tuple[str, ...] = ()
    # transformers `config.json` model_type values of this family (the config file accepts them too).
    hf_model_types: tuple[str, ...] = ()
    # Whether bitsandbytes can quantize it (transformers 5 skips Falcon's own FalconLinear layers).
    quantizable: bool = True
    # Stops of its chats beyond its format's: the speakers a base model invents in a transcript.
    chat_stops: tuple[str, ...] = ()


_INST_MARKERS = ("[INST]", "[/INST]", "</s>")

MODEL_TYPES: dict[str, ModelType] = {
    t.name: t
    for t in (
        ModelType(
            name="llama",
            prompt_format=PromptFormat.INST,
            trailing_markers=_INST_MARKERS,
            hf_model_types=("llama",),
        ),
        ModelType(
            name="tinyllama",
            prompt_format=PromptFormat.ZEPHYR,
            trailing_markers=("<|user|>", "<|system|>", "<|assistant|>", "</s>"),
        ),
        ModelType(
            name="mistral",
            prompt_format=PromptFormat.INST,
            trailing_markers=_INST_MARKERS,
            hf_model_types=("mistral", "mixtral"),
        ),
        ModelType(
            name="gemma",
            prompt_format=PromptFormat.GEMMA,
            trailing_markers=("<end_of_turn>", "<start_of_turn>", "<eos>"),
            hf_model_types=("gemma", "gemma2", "gemma3_text"),
        ),
        ModelType(
            name="gpt",
            trailing_markers=("<|endoftext|>",),
            hf_model_types=("gpt2", "gpt_neox", "gptj", "gpt_neo", "gpt_bigcode"),
        ),
        ModelType(
            name="falcon", trailing_markers=("<|endoftext|>",), hf_model_types=("falcon",), quantizable=False
        ),
        ModelType(name="bloom", trailing_markers=("</s>",), hf_model_types=("bloom",)),
        ModelType(name="opt", trailing_markers=("</s>",), hf_model_types=("opt",)),
        # A base (pretrained, not chat-tuned) causal LM of any architecture: a chat format it never
        # saw makes it ramble, the plain "User: ...\nAssistant:" format it continues sensibly. Never
        # inferred: set it as the config entry's model_type.
        ModelType(
            name="base",
            trailing_markers=("</s>", "<eos>", "<|endoftext|>"),
            # A base model's chat goes on as a transcript: a new speaker line ends its turn, the
            # roles it invents and its own next turn (which repeats the prompt) included.
            chat_stops=(
                "\nAssistant:", "\nStudent:", "\nTeacher:", "\nHuman:", "\nAI:", "\nQuestion:", "\nQ:",
            ),
        ),
        ModelType(name="t5", task=Task.SEQ2SEQ, trailing_markers=("</s>",), hf_model_types=("t5", "mt5")),
        ModelType(name="bert", task=Task.EMBEDDING, hf_model_types=("bert",)),
        ModelType(name="roberta", task=Task.EMBEDDING, hf_model_types=("roberta", "xlm-roberta")),
        # Any encoder with a one-label classification head (config_model_type tells it from config.json).
        ModelType(name=CROSS_ENCODER, task=Task.RERANK, hf_model_types=(CROSS_ENCODER, "reranker")),
        # Any other architecture transformers loads, by what its files say it is (never by id).
        ModelType(name="causal", prompt_format=PromptFormat.TEMPLATE),
        ModelType(name="vision", task=Task.VISION, prompt_format=PromptFormat.TEMPLATE),
        ModelType(name="seq2seq", task=Task.SEQ2SEQ, prompt_format=PromptFormat.TEMPLATE),
        ModelType(name="embedding", task=Task.EMBEDDING),
    )
}

# The generic types: the architecture, not a family, decides how these load.
GENERIC_TYPES = frozenset({"causal", "vision", "seq2seq", "embedding"})

_HF_TO_TYPE = {hf: t.name for t in MODEL_TYPES.values() for hf in t.hf_model_types}
# What users write in the config file besides the names and transformers' model_types.
_ALIASES = {"tiny_llama": "tinyllama", **_HF_TO_TYPE}

# The seed's id rules, most specific first: org or name patterns (case-insensitive).
_ID_RULES: tuple[tuple[str, str], ...] = (
    (r"tinyllama", "tinyllama"),
    (r"(^|/)mistralai/|mistral|mixtral", "mistral"),
    (r"(^|/)meta-llama/|llama", "llama"),
    (r"(^|/)google/gemma|gemma", "gemma"),
    (r"(^|/)tiiuae/|falcon", "falcon"),
    (r"(^|/)bigscience/|bloom", "bloom"),
    (r"(^|/)facebook/opt|(^|[/-])opt-", "opt"),
    (r"flan-t5|(^|[/-])m?t5([-_.]|$)|(^|/)t5-", "t5"),
    (r"rerank|cross-encoder|ms-marco", CROSS_ENCODER),
    (r"roberta", "roberta"),
    (r"bert|minilm|(^|/)sentence-transformers/", "bert"),
    (r"gpt|(^|/)openai-community/|(^|/)EleutherAI/", "gpt"),
)


def default_quantization(model_type: ModelType, configured: str) -> str:
    """The quantization a load gets when neither the request nor the config file names one: the
    configured default, or "none" for a type bitsandbytes cannot quantize (asked explicitly, that
    type's 4bit/8bit stays a clear error at load)."""
    return configured if model_type.quantizable else "none"


def get_model_type(name: str) -> ModelType:
    """The ModelType for a config-file `model_type` value; unknown names are a clear error."""
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    try:
        return MODEL_TYPES[key]
    except KeyError:
        known = ", ".join(sorted(MODEL_TYPES))
        raise UnsupportedModelTypeError(
            f"unknown model_type {name!r}; supported: {known}", param="model_type"
        ) from None


def type_from_id(model_id: str) -> ModelType | None:
    """The seed's inference from the model id alone, or None when the id says nothing."""
    lowered = model_id.lower()
    for pattern, name in _ID_RULES:
        if re.search(pattern, lowered, flags=re.IGNORECASE):
            return MODEL_TYPES[name]
    return None


def config_model_type(config: object) -> str | None:
    """The type a transformers `config.json` names: its `model_type`, or "cross-encoder" for a
    sequence classifier with one label (a reranker: `AutoModelForSequenceClassification`, as the
    sentence-transformers CrossEncoder layout saves it too), whatever its encoder."""
    if not isinstance(config, dict):
        return None
    architectures = config.get("architectures") or []
    classifier = any(str(a).endswith("ForSequenceClassification") for a in architectures)
    labels = config.get("id2label")
    one_label = config.get("num_labels") == 1 or (isinstance(labels, dict) and len(labels) == 1)
    if classifier and one_label:
        return CROSS_ENCODER
    found = config.get("model_type")
    return found if isinstance(found, str) else None


def type_from_hf_config(hf_model_type: str | None) -> ModelType | None:
    if not hf_model_type:
        return None
    name = _HF_TO_TYPE.get(hf_model_type)
    return MODEL_TYPES[name] if name else None


def type_from_architecture(
    config: Mapping[str, Any] | None, *, sentence_transformers: bool = False
) -> ModelType:
    """The generic type of an architecture outside the seed's families, from its `config.json`
    (None: unreadable, or a GGUF) and whether it ships sentence-transformers modules (`modules.json`):
    an embedding model (sentence-transformers files, or only base-model classes in `architectures`,
    e.g. `ModernBertModel`), an encoder-decoder, an image-text-to-text checkpoint (`vision_config`),
    else a causal LM."""
    config = config or {}
    if sentence_transformers:
        return MODEL_TYPES["embedding"]
    if config.get("is_encoder_decoder"):
        return MODEL_TYPES["seq2seq"]
    if isinstance(config.get("vision_config"), dict):
        return MODEL_TYPES["vision"]
    archs = [a for a in config.get("architectures") or () if isinstance(a, str)]
    if archs and all(a.endswith(_ENCODER_SUFFIXES) for a in archs):
        return MODEL_TYPES["embedding"]
    return MODEL_TYPES["causal"]


_ENCODER_SUFFIXES = ("Model", "ForMaskedLM")


def infer_model_type(
    model_id: str,
    *,
    hf_model_type: str | None = None,
    override: str | None = None,
    generic: ModelType | None = None,
) -> ModelType:
    """The config file's override, else the id, else `config.json`'s `model_type`.

    The id only decides when `config.json` agrees on the family or is absent; an id that looks
    like Llama but holds a GPT-2 is a GPT-2 (the weights decide what can load). An architecture
    outside the seed's families gets `generic` (`type_from_architecture` of its files; a causal LM
    when not given): whether transformers can load it is decided at load.
    """
    if override:
        return get_model_type(override)
    from_config = type_from_hf_config(hf_model_type)
    if hf_model_type and from_config is None:
        return generic or MODEL_TYPES["causal"]
    from_id = type_from_id(model_id)
    if from_config is None:
        if from_id is None:
            known = ", ".join(sorted(MODEL_TYPES))
            raise UnsupportedModelTypeError(
                f"cannot tell the model type of {model_id!r} (no config.json model_type); set "
                f'"model_type" in the config file to one of: {known}',
                param="model_type",
            )
        return from_id
    # The id refines the family (TinyLlama is a Llama with its own prompt format) but never overrules it.
    return from_id if from_id and _same_family(from_id, from_config) else from_config


def _same_family(a: ModelType, b: ModelType) -> bool:
    # TinyLlama is a Llama architecture with its own prompt format.
    llamas = {"llama", "tinyllama"}
    return a.name == b.name or (a.name in llamas and b.name in llamas)
