"""Tiny random-weight models of every supported family, for tests and the offline demo.

Each model is a real transformers architecture (2 layers, hidden 64) saved with `save_pretrained`,
with a byte-level BPE tokenizer trained here on a built-in corpus and, where the family has one,
the family's chat template. Every Linear's in_features is a multiple of 64 so bitsandbytes 4-bit
works on CPU. Weights are drawn with std `init_std` (0.5 gives varied greedy text; HF's 0.02
repeats one token).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from msgspec import Struct

FAMILIES: tuple[str, ...] = (
    "llama", "tinyllama", "mistral", "gemma", "gpt2", "gpt_neox", "gptj", "gpt_neo",
    "falcon", "bloom", "opt", "t5", "bert", "roberta",
)

# Not a family of FAMILIES (the generation and embedding tests run over those): a BERT with a
# one-label classification head, as cross-encoder rerankers (ms-marco MiniLM, bge-reranker) are.
CROSS_ENCODER = "cross-encoder"

# Bump when the output of the builder changes, so cached folders are rebuilt.
BUILDER_VERSION = 1
VOCAB_SIZE = 768

_SENTENCES = """\
The quick brown fox jumps over the lazy dog. A small model can still say many different things.
Every morning the baker opens the shop at six and sells fresh bread to the neighbours.
She ordered a café au lait and a croissant, then read the newspaper by the window.
It would be naïve to think that a random model understands the question it was asked.
The weather today is sunny with a light breeze from the west; tomorrow it may rain.
Tokyo is written 東京 and Japanese is written 日本語 in the language itself.
He smiled 😀 and waved 👋 before the train left the station at ten past nine.
Please write a short poem about the sea, the wind and the ships that sail at night.
What is the capital of France? The capital of France is Paris, a city on the Seine.
How many legs does a spider have? A spider has eight legs and most spiders spin webs.
Water boils at one hundred degrees Celsius at sea level and freezes at zero degrees.
The library closes at eight in the evening, but the reading room stays open until ten.
Our team met on Monday to plan the release; the tests must pass before we ship it.
A gateway receives requests, chooses a worker and streams the tokens back to the client.
The garden was full of roses, tulips and daisies, and the bees were busy all afternoon.
In the winter the lake freezes and children skate on the ice after school.
The museum shows paintings, sculptures and old maps of the coast and its harbours.
I think, therefore I am. To be or not to be, that is the question.
Numbers like 1, 2, 3, 42, 100 and 2024 appear in text, as do dates like 2024-05-17.
Mathematics: 3 + 4 = 7, 10 / 2 = 5, and the square root of 81 is 9.
Code often looks like this: def add(a, b): return a + b, or print("hello world").
The recipe calls for two eggs, a cup of flour, some sugar, butter and a pinch of salt.
Mix the dry ingredients, add the milk slowly and bake for twenty minutes at 180 °C.
The river runs through the valley, past the old mill and under the stone bridge.
My friend Zoë lives in Köln and works at a small studio that designs furniture.
Good morning! How are you today? I am fine, thank you, and you?
The assistant answered the user politely and explained each step of the solution.
Thank you for your help. You are welcome; let me know if there is anything else.
The first rule of the project is to keep things simple and to measure before guessing.
Large language models predict the next token from the tokens that came before it.
A story begins: once upon a time there was a king who had three daughters.
The youngest daughter was brave and clever, and she travelled far to find the golden key.
The mountain path was steep and narrow, and the travellers rested by a cold spring.
At night the stars shine brightly over the desert, and the air becomes cool and still.
The market sells apples, pears, plums, cherries, grapes, lemons and oranges.
Ελληνικά, русский язык, العربية and हिन्दी are written in other scripts.
Prices rose by 5% last year; the euro € and the pound £ both changed against the dollar $.
The engineer fixed the bug, wrote a test for it and explained the cause in the report.
Birds sing in the trees while the cat sleeps in the sun on the warm stone wall.
The meeting ended early, so everyone went outside to enjoy the afternoon light.
Summer holidays by the sea: swimming, sailing, building sand castles and eating ice cream.
"""

_SUBJECTS = ("the teacher", "a student", "my neighbour", "the old man", "our robot", "the captain")
_VERBS = ("reads", "writes", "finds", "likes", "paints", "remembers", "explains", "carries")
_OBJECTS = ("a long letter", "the blue book", "an old song", "the small boat", "a new idea", "the map")


def corpus_lines() -> list[str]:
    """The built-in training text: hand-written lines plus simple generated sentences."""
    lines = [part.strip() for line in _SENTENCES.splitlines() for part in line.split(". ") if part]
    lines += [
        f"{s.capitalize()} {v} {o} {when}."
        for s in _SUBJECTS
        for v in _VERBS
        for o, when in zip(_OBJECTS, ("today", "at night", "again", "in May", "slowly", "twice"), strict=True)
    ]
    return lines


class TokenizerSpec(Struct, frozen=True, kw_only=True):
    special: tuple[str, ...]  # trained first, so they get ids 0..n-1 in this order
    bos: str | None = None
    eos: str | None = None
    unk: str | None = None
    pad: str | None = None
    add_bos: bool = False
    add_eos: bool = False
    extra: tuple[str, ...] = ()  # chat markers, registered as extra special tokens
    bert_like: tuple[str, str, str, str] | None = None  # (cls, sep, pad, mask) for [CLS] x [SEP]
    # Named model-specific tokens (`image_token`, `boi_token`): processors read them off the tokenizer.
    named: tuple[tuple[str, str], ...] = ()


_LLAMA_TOK = TokenizerSpec(special=("<unk>", "<s>", "</s>"), bos="<s>", eos="</s>", unk="<unk>",
                            add_bos=True)
_GPT_TOK = TokenizerSpec(special=("<|endoftext|>",), bos="<|endoftext|>", eos="<|endoftext|>",
                          unk="<|endoftext|>")
_TOKENIZERS: dict[str, TokenizerSpec] = {
    "llama": _LLAMA_TOK,
    "tinyllama": TokenizerSpec(
        special=("<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"),
        bos="<s>", eos="</s>", unk="<unk>", pad="</s>", add_bos=True,
        extra=("<|system|>", "<|user|>", "<|assistant|>"),
    ),
    "mistral": TokenizerSpec(
        special=("<unk>", "<s>", "</s>", "[INST]", "[/INST]"),
        bos="<s>", eos="</s>", unk="<unk>", add_bos=True, extra=("[INST]", "[/INST]"),
    ),
    "gemma": TokenizerSpec(
        special=("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
        bos="<bos>", eos="<eos>", unk="<unk>", pad="<pad>", add_bos=True,
        extra=("<start_of_turn>", "<end_of_turn>"),
    ),
    "gpt2": _GPT_TOK, "gpt_neox": _GPT_TOK, "gptj": _GPT_TOK, "gpt_neo": _GPT_TOK, "falcon": _GPT_TOK,
    "bloom": TokenizerSpec(special=("<unk>", "<s>", "</s>", "<pad>"), bos="<s>", eos="</s>", unk="<unk>",
                            pad="<pad>"),
    "opt": TokenizerSpec(special=("<s>", "<pad>", "</s>", "<unk>"), bos="<s>", eos="</s>", unk="<unk>",
                          pad="<pad>", add_bos=True),
    "t5": TokenizerSpec(special=("<pad>", "</s>", "<unk>"), eos="</s>", unk="<unk>", pad="<pad>",
                         add_eos=True),
    "bert": TokenizerSpec(special=("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"), unk="[UNK]",
                           bert_like=("[CLS]", "[SEP]", "[PAD]", "[MASK]")),
    "roberta": TokenizerSpec(special=("<s>", "<pad>", "</s>", "<unk>", "<mask>"), bos="<s>", eos="</s>",
                              unk="<unk>", bert_like=("<s>", "</s>", "<pad>", "<mask>")),
}
_TOKENIZERS[CROSS_ENCODER] = _TOKENIZERS["bert"]


@lru_cache(maxsize=16)
def _trained_tokenizer_json(special: tuple[str, ...], vocab_size: int) -> str:
    """A byte-level BPE trained on the built-in corpus, as tokenizer.json text (cached: ~50 ms)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte: any text round-trips
        show_progress=False,
    )
    tok.train_from_iterator(corpus_lines(), trainer=trainer)
    return tok.to_str()


def build_tokenizer(family: str, *, vocab_size: int = VOCAB_SIZE, context: int = 512) -> Any:
    """The family's tokenizer (a transformers `TokenizersBackend`), with its chat template if any."""
    return tokenizer_from_spec(_TOKENIZERS[family], CHAT_TEMPLATES.get(family), vocab_size=vocab_size,
                               context=context)


def tokenizer_from_spec(
    spec: TokenizerSpec, template: str | None, *, vocab_size: int = VOCAB_SIZE, context: int = 512
) -> Any:
    """A byte-level BPE tokenizer with `spec`'s special tokens and `template` as its chat template."""
    from tokenizers import Tokenizer, processors
    from transformers import TokenizersBackend

    tok = Tokenizer.from_str(_trained_tokenizer_json(spec.special, vocab_size))
    kwargs: dict[str, Any] = {
        "bos_token": spec.bos, "eos_token": spec.eos, "unk_token": spec.unk, "pad_token": spec.pad,
        "model_max_length": context, "clean_up_tokenization_spaces": False,
    }
    if spec.bert_like:
        cls, sep, pad, mask = spec.bert_like
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}",
            pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
        )
        kwargs.update(cls_token=cls, sep_token=sep, pad_token=pad, mask_token=mask)
    else:
        # Explicit flags make TokenizersBackend write the bos/eos TemplateProcessing itself.
        kwargs.update(add_bos_token=spec.add_bos, add_eos_token=spec.add_eos)
    if spec.extra:
        kwargs["extra_special_tokens"] = list(spec.extra)
    kwargs.update(dict(spec.named))
    tokenizer = TokenizersBackend(tokenizer_object=tok, **kwargs)
    if template is not None:
        tokenizer.chat_template = template
    return tokenizer


# Chat templates modelled on the real ones (TinyLlama-Chat, Mistral-Instruct, Gemma-it).
CHAT_TEMPLATES: dict[str, str] = {
    "tinyllama": (
        "{% for message in messages %}"
        "{% if message['role'] in ('system', 'user', 'assistant') %}"
        "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    ),
    "mistral": (
        "{{ bos_token }}{% for message in messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
        "{% endif %}"
        "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
        "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
        "{% endfor %}"
    ),
    "gemma": (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for message in messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
        "{% endif %}"
        "{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
        "{% else %}{% set role = message['role'] %}{% endif %}"
        "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
    ),
}


class _Shape(Struct, frozen=True, kw_only=True):
    hidden: int
    layers: int
    intermediate: int
    heads: int
    context: int
    sliding_window: int | None = None


def _config(family: str, shape: _Shape, tokenizer: Any) -> Any:
    """The family's transformers config; every Linear's in_features is hidden, intermediate or
    heads * head_dim == hidden, so all are multiples of 64."""
    import transformers as tf

    h, n, ff, heads, ctx = shape.hidden, shape.layers, shape.intermediate, shape.heads, shape.context
    ids: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    rope: dict[str, Any] = {"hidden_size": h, "intermediate_size": ff, "num_hidden_layers": n,
                            "num_attention_heads": heads, "max_position_embeddings": ctx,
                            "tie_word_embeddings": False}
    if family in ("llama", "tinyllama"):
        return tf.LlamaConfig(**rope, num_key_value_heads=max(1, heads // 2), **ids)
    window = shape.sliding_window
    if family == "mistral":
        return tf.MistralConfig(**rope, num_key_value_heads=max(1, heads // 2), sliding_window=window, **ids)
    if family == "gemma" and window is not None:  # Gemma 3: sliding layers, then a full one
        layer_types = ["sliding_attention"] * (n - 1) + ["full_attention"]
        return tf.Gemma3TextConfig(**rope, num_key_value_heads=max(1, heads // 2), head_dim=h // heads,
                                   query_pre_attn_scalar=h // heads, sliding_window=window,
                                   layer_types=layer_types, **ids)
    if family == "gemma":
        return tf.GemmaConfig(**rope, num_key_value_heads=max(1, heads // 2), head_dim=h // heads, **ids)
    if family == "gpt2":
        return tf.GPT2Config(n_embd=h, n_layer=n, n_head=heads, n_inner=ff, n_positions=ctx, **ids)
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(**rope, **ids)
    if family == "gptj":
        return tf.GPTJConfig(n_embd=h, n_layer=n, n_head=heads, n_inner=ff, n_positions=ctx,
                             rotary_dim=h // heads // 2, tie_word_embeddings=False, **ids)
    if family == "gpt_neo":
        return tf.GPTNeoConfig(hidden_size=h, num_layers=n, num_heads=heads, intermediate_size=ff,
                               max_position_embeddings=ctx, attention_types=[[["global", "local"], n // 2]],
                               window_size=min(256, ctx), **ids)
    if family == "falcon":
        return tf.FalconConfig(**{**rope, "tie_word_embeddings": True}, ffn_hidden_size=ff, **ids)
    if family == "bloom":
        # ALiBi: no position table; real checkpoints state their training length as seq_length.
        return tf.BloomConfig(hidden_size=h, n_layer=n, n_head=heads, **{"seq_length": ctx, **ids})
    if family == "opt":
        return tf.OPTConfig(hidden_size=h, num_hidden_layers=n, num_attention_heads=heads, ffn_dim=ff,
                            word_embed_proj_dim=h, max_position_embeddings=ctx, **ids)
    if family == "t5":
        # Relative positions: like real T5 checkpoints, n_positions states the trained length.
        extra = {"n_positions": ctx, "decoder_start_token_id": tokenizer.pad_token_id, "bos_token_id": None}
        return tf.T5Config(d_model=h, d_kv=h // heads, d_ff=ff, num_layers=n, num_heads=heads,
                           **{**ids, **extra})
    if family == CROSS_ENCODER:
        return tf.BertConfig(hidden_size=h, num_hidden_layers=n, num_attention_heads=heads,
                             intermediate_size=ff, max_position_embeddings=ctx, **{**ids, "num_labels": 1})
    if family in ("bert", "roberta"):
        cls = tf.BertConfig if family == "bert" else tf.RobertaConfig
        # RoBERTa's positions start after padding_idx, hence the +2 of real checkpoints.
        positions = ctx + 2 if family == "roberta" else ctx
        return cls(hidden_size=h, num_hidden_layers=n, num_attention_heads=heads, intermediate_size=ff,
                   max_position_embeddings=positions, **ids)
    raise ValueError(f"unknown tiny model family {family!r}; known: {', '.join(FAMILIES)}")


def _model_class(family: str) -> Any:
    import transformers as tf

    if family == "t5":
        return tf.AutoModelForSeq2SeqLM
    if family in ("bert", "roberta"):
        return tf.AutoModel
    if family == CROSS_ENCODER:
        return tf.AutoModelForSequenceClassification
    return tf.AutoModelForCausalLM


def _generation_config(family: str, tokenizer: Any) -> Any:
    from transformers import GenerationConfig

    eos: int | list[int] = tokenizer.eos_token_id
    if family == "gemma":  # like Gemma-it: a turn end stops generation too
        eos = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    extra = {"decoder_start_token_id": tokenizer.pad_token_id} if family == "t5" else {}
    return GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=pad, **extra)


def _init_weights(model: Any, init_std: float, seed: int) -> None:
    """Matrices drawn from N(0, init_std) with our own generator; norms and biases keep HF's init."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * init_std)


def build_tiny_model(
    family: str,
    dest: Path,
    *,
    init_std: float = 0.5,
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    intermediate: int | None = None,
    heads: int | None = None,
    context: int = 512,
    sliding_window: int | None = None,
) -> Path:
    """Write a complete `save_pretrained` folder (model, tokenizer, chat template, generation config).

    Attention heads default to hidden // 16, and grouped-query families keep heads // 2 key/value
    heads: bitsandbytes' CPU 4-bit also needs out_features to be a multiple of 32. A
    `sliding_window` makes mistral attend within that window on every layer, and gemma Gemma 3's
    text architecture (sliding-window layers, the last one full).
    """
    import torch

    if family not in (*FAMILIES, CROSS_ENCODER):
        raise ValueError(f"unknown tiny model family {family!r}; known: {', '.join(FAMILIES)}")
    if sliding_window is not None and family not in ("mistral", "gemma"):
        raise ValueError("only mistral and gemma take a sliding_window")
    shape = _Shape(hidden=hidden, layers=layers, intermediate=intermediate or 2 * hidden,
                   heads=heads or max(1, hidden // 16), context=context, sliding_window=sliding_window)
    if shape.hidden % 64 or shape.intermediate % 64:
        raise ValueError("hidden and intermediate must be multiples of 64 (bitsandbytes 4-bit on CPU)")
    tokenizer = build_tokenizer(family, context=context)
    config = _config(family, shape, tokenizer)
    with torch.random.fork_rng(devices=[]):  # from_config draws from the global RNG: keep it untouched
        torch.manual_seed(seed)
        model = _model_class(family).from_config(config, dtype=torch.float32)
    _init_weights(model, init_std, seed)
    if family not in ("bert", "roberta", CROSS_ENCODER):
        model.generation_config = _generation_config(family, tokenizer)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def build_demo_chat_model(dest: Path) -> Path:
    """The offline demo: a TinyLlama-style chat model, larger so its replies look varied.

    Its generation config suppresses lone bytes that decode to nothing printable, so the demo's
    replies read as (nonsense) words rather than replacement characters.
    """
    from transformers import AutoTokenizer, GenerationConfig

    dest = build_tiny_model("tinyllama", dest, hidden=256, layers=4, heads=8, init_std=0.2, seed=7)
    tokenizer = AutoTokenizer.from_pretrained(dest)
    generation = GenerationConfig.from_pretrained(dest)
    unprintable = [i for i in range(len(tokenizer)) if not _printable(str(tokenizer.decode([i])))]
    generation.suppress_tokens = unprintable
    generation.save_pretrained(dest)
    return dest


def _printable(text: str) -> bool:
    return "\ufffd" not in text and all(c.isprintable() or c in "\n " for c in text)


def ensure_tiny_model(family: str, cache_dir: Path, **kwargs: Any) -> Path:
    """The folder of `build_tiny_model(family, **kwargs)` under `cache_dir`, built once."""
    return _ensure(cache_dir, family, kwargs, lambda dest: build_tiny_model(family, dest, **kwargs))


def ensure_demo_chat_model(cache_dir: Path) -> Path:
    """The folder of `build_demo_chat_model` under `cache_dir`, built once."""
    return _ensure(cache_dir, "demo-chat", {}, build_demo_chat_model)


def _ensure(cache_dir: Path, name: str, kwargs: dict[str, Any], build: Callable[[Path], Path]) -> Path:
    """Built into a temporary folder and renamed into place, so a reader never sees a half-written
    model and two processes racing both end up with the same complete folder."""
    import transformers

    key = json.dumps([BUILDER_VERSION, transformers.__version__, name, sorted(kwargs.items())])
    final = Path(cache_dir) / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
