"""The tiny model builder: every family builds, reloads, runs, and takes 4-bit on CPU."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2.exceptions import TemplateError
from transformers.pytorch_utils import Conv1D

from tests.support.tiny_models import (
    FAMILIES,
    build_demo_chat_model,
    build_tiny_model,
    build_tokenizer,
    ensure_tiny_model,
)

TinyDir = Callable[[str], Path]
ENCODERS = ("bert", "roberta")
TEXTS = ("Hello, world!", "café naïve 日本語 😀👋🏽", "  two  spaces\n\ttab", "Zoë in Köln: 5 € > 3 £", "")


def _model_class(family: str) -> Any:
    if family == "t5":
        return tf.AutoModelForSeq2SeqLM
    return tf.AutoModel if family in ENCODERS else tf.AutoModelForCausalLM


def _load(path: Path, family: str, **kwargs: object) -> tuple[Any, Any]:
    return _model_class(family).from_pretrained(path, **kwargs), tf.AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_reloads_and_runs(tiny_model_dir: TinyDir, family: str) -> None:
    model, tokenizer = _load(tiny_model_dir(family), family)
    enc = tokenizer("The weather today is", return_tensors="pt")
    with torch.no_grad():
        if family in ENCODERS:
            hidden = model(**enc).last_hidden_state
            assert hidden.shape == (1, enc["input_ids"].shape[1], 64)
            return
        out = model.generate(**enc, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    # T5 returns decoder ids only (decoder start + new tokens); causal LMs the prompt too.
    prompt_len = 1 if family == "t5" else enc["input_ids"].shape[1]
    assert out.shape[1] == prompt_len + 5
    assert int(out.max()) < len(tokenizer)


@pytest.mark.parametrize("family", FAMILIES)
def test_reloaded_tokenizer_encodes_like_the_built_one(tiny_model_dir: TinyDir, family: str) -> None:
    reloaded = tf.AutoTokenizer.from_pretrained(tiny_model_dir(family))
    built = build_tokenizer(family)
    assert type(reloaded).__name__ == "TokenizersBackend"
    for text in TEXTS:
        assert reloaded(text)["input_ids"] == built(text)["input_ids"]


@pytest.mark.parametrize(
    ("family", "first", "last"),
    [
        ("llama", "<s>", "x"), ("tinyllama", "<s>", "x"), ("mistral", "<s>", "x"), ("gemma", "<bos>", "x"),
        ("gpt2", "x", "x"), ("falcon", "x", "x"), ("bloom", "x", "x"), ("opt", "<s>", "x"),
        ("t5", "x", "</s>"), ("bert", "[CLS]", "[SEP]"), ("roberta", "<s>", "</s>"),
    ],
)
def test_special_tokens_are_added_like_the_family(tiny_model_dir: TinyDir, family: str, first: str,
                                                  last: str) -> None:
    tokenizer = tf.AutoTokenizer.from_pretrained(tiny_model_dir(family))
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("x")["input_ids"])
    assert (tokens[0], tokens[-1]) == (first, last)


@pytest.mark.parametrize("family", FAMILIES)
def test_config_states_ids_and_context_length(tiny_model_dir: TinyDir, family: str) -> None:
    path = tiny_model_dir(family)
    config = json.loads((path / "config.json").read_text())
    tokenizer = tf.AutoTokenizer.from_pretrained(path)
    assert config["vocab_size"] == len(tokenizer)
    assert config["eos_token_id"] == tokenizer.eos_token_id
    assert config["pad_token_id"] == tokenizer.pad_token_id
    context_keys = ("max_position_embeddings", "n_positions", "seq_length")
    # RoBERTa's table holds 2 more rows than usable positions (they start after padding_idx).
    usable = 512 + (2 if family == "roberta" else 0)
    assert min(config[k] for k in context_keys if k in config) == usable
    assert tokenizer.model_max_length == 512
    if family not in ENCODERS:
        generation = json.loads((path / "generation_config.json").read_text())
        assert generation["pad_token_id"] is not None
        assert tokenizer.eos_token_id in (generation["eos_token_id"] if family == "gemma" else
                                          [generation["eos_token_id"]])


def test_tinyllama_is_a_llama_architecture(tiny_model_dir: TinyDir) -> None:
    config = json.loads((tiny_model_dir("tinyllama") / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["architectures"] == ["LlamaForCausalLM"]


def test_t5_decoder_starts_with_pad(tiny_model_dir: TinyDir) -> None:
    config = json.loads((tiny_model_dir("t5") / "config.json").read_text())
    assert config["decoder_start_token_id"] == config["pad_token_id"] == 0


CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"}]


@pytest.mark.parametrize(
    ("family", "messages", "expected"),
    [
        ("tinyllama", [{"role": "system", "content": "Be brief."}, *CHAT],
         "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello</s>\n<|user|>\nBye</s>\n"
         "<|assistant|>\n"),
        ("mistral", CHAT, "<s>[INST] Hi [/INST]Hello</s>[INST] Bye [/INST]"),
        ("gemma", CHAT,
         "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
         "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"),
    ],
)
def test_chat_template_renders_the_family_format(tiny_model_dir: TinyDir, family: str,
                                                 messages: list[dict[str, str]], expected: str) -> None:
    path = tiny_model_dir(family)
    assert (path / "chat_template.jinja").is_file()
    tokenizer = tf.AutoTokenizer.from_pretrained(path)
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == expected


@pytest.mark.parametrize("family", ["tinyllama", "mistral", "gemma"])
def test_chat_markers_are_single_special_tokens(tiny_model_dir: TinyDir, family: str) -> None:
    tokenizer = tf.AutoTokenizer.from_pretrained(tiny_model_dir(family))
    rendered = tokenizer.apply_chat_template(CHAT[:1], tokenize=False, add_generation_prompt=True)
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    markers = {"tinyllama": "<|user|>", "mistral": "[INST]", "gemma": "<start_of_turn>"}
    assert markers[family] in tokens
    assert markers[family] in tokenizer.all_special_tokens


@pytest.mark.parametrize("family", ["mistral", "gemma"])
@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Again"}],
    ],
)
def test_instruct_templates_raise_on_system_or_non_alternating_roles(
    tiny_model_dir: TinyDir, family: str, messages: list[dict[str, str]]
) -> None:
    tokenizer = tf.AutoTokenizer.from_pretrained(tiny_model_dir(family))
    with pytest.raises(TemplateError):
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "gptj", "gpt_neo", "falcon", "bloom", "opt",
                                    "t5", "bert", "roberta"])
def test_base_families_have_no_chat_template(tiny_model_dir: TinyDir, family: str) -> None:
    path = tiny_model_dir(family)
    assert not (path / "chat_template.jinja").exists()
    assert tf.AutoTokenizer.from_pretrained(path).chat_template is None


@pytest.mark.parametrize("family", FAMILIES)
def test_byte_level_tokenizer_round_trips_multibyte_text(tiny_model_dir: TinyDir, family: str) -> None:
    tokenizer = tf.AutoTokenizer.from_pretrained(tiny_model_dir(family))
    for text in TEXTS:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
        assert tokenizer.unk_token_id not in ids or tokenizer.unk_token_id is None


@settings(max_examples=60, deadline=None)
@given(text=st.text())
def test_any_text_round_trips_through_the_llama_tokenizer(text: str) -> None:
    tokenizer = build_tokenizer("llama")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def _linears(model: Any) -> list[tuple[str, int, int]]:
    out = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            out.append((name, module.in_features, module.out_features))
        elif isinstance(module, Conv1D):  # GPT-2 stores (in, out)
            out.append((name, module.weight.shape[0], module.weight.shape[1]))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_every_linear_has_4bit_friendly_shapes(tiny_model_dir: TinyDir, family: str) -> None:
    model, _ = _load(tiny_model_dir(family), family)
    linears = _linears(model)
    assert linears
    # bitsandbytes' CPU 4-bit: in_features % 64 (blocksize), out_features % 32 (packing block).
    assert [(n, i, o) for n, i, o in linears if i % 64 or o % 32] == []


NF4 = tf.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "falcon"])
def test_4bit_loads_and_runs_a_forward_on_cpu(tiny_model_dir: TinyDir, family: str) -> None:
    model, tokenizer = _load(tiny_model_dir(family), family, quantization_config=NF4, device_map="cpu")
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    enc = tokenizer("The weather today is", return_tensors="pt")
    extra = {"decoder_input_ids": torch.tensor([[0]])} if family == "t5" else {}
    with torch.no_grad():  # the inference path is where CPU 4-bit repacks weights (and fails on bad shapes)
        out = model(**enc, **extra)[0]
    assert torch.isfinite(out).all()


def test_falcon_linears_are_left_unquantized_by_transformers(tiny_model_dir: TinyDir) -> None:
    # transformers 5.24 skips FalconLinear (an nn.Linear subclass): 4-bit silently does nothing.
    model, _ = _load(tiny_model_dir("falcon"), "falcon", quantization_config=NF4, device_map="cpu")
    assert not any(type(m).__name__ == "Linear4bit" for m in model.modules())


def test_same_seed_gives_same_weights_and_other_seed_differs(tmp_path: Path) -> None:
    files = [
        (build_tiny_model("gpt2", tmp_path / name, seed=seed) / "model.safetensors").read_bytes()
        for name, seed in (("a", 1), ("b", 1), ("c", 2))
    ]
    assert files[0] == files[1] != files[2]


def test_large_init_gives_varied_greedy_text(tiny_model_dir: TinyDir) -> None:
    model, tokenizer = _load(tiny_model_dir("llama"), "llama")
    enc = tokenizer("Once upon a time", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=20, min_new_tokens=20, do_sample=False)
    assert len(set(out[0, enc["input_ids"].shape[1]:].tolist())) >= 8


def test_ensure_builds_once_and_racers_share_one_folder(tmp_path: Path) -> None:
    with ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(lambda _: ensure_tiny_model("opt", tmp_path, layers=1), range(2)))
    assert paths[0] == paths[1]
    assert [p.name for p in tmp_path.iterdir()] == [paths[0].name]  # no temp folders left
    assert (paths[0] / "model.safetensors").is_file()
    mtime = (paths[0] / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model("opt", tmp_path, layers=1) == paths[0]
    assert (paths[0] / "model.safetensors").stat().st_mtime_ns == mtime
    assert ensure_tiny_model("opt", tmp_path, layers=2) != paths[0]


def test_unknown_family_and_bad_sizes_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown tiny model family"):
        build_tiny_model("gpt5", tmp_path)
    with pytest.raises(ValueError, match="multiples of 64"):
        build_tiny_model("llama", tmp_path, hidden=96)


@pytest.mark.slow
def test_demo_chat_model_loads_fast_and_replies_in_printable_text(tmp_path: Path) -> None:
    path = build_demo_chat_model(tmp_path / "demo")
    start = time.perf_counter()
    model, tokenizer = _load(path, "tinyllama")
    assert time.perf_counter() - start < 1.0
    prompt = tokenizer.apply_chat_template(CHAT[:1], tokenize=False, add_generation_prompt=True)
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=24, min_new_tokens=24, do_sample=False)
    reply: str = tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "\ufffd" not in reply
    assert len(set(reply.split())) >= 3
