"""Model type inference: the seed's id rules, config.json's model_type, the override, unknowns."""

from __future__ import annotations

from typing import Any

import pytest

from shared.errors import UnsupportedModelTypeError
from shared.model_types import (
    MODEL_TYPES,
    PromptFormat,
    Task,
    get_model_type,
    infer_model_type,
    type_from_architecture,
    type_from_hf_config,
    type_from_id,
)

ID_CASES = [
    ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", "tinyllama"),
    ("mistralai/Mistral-7B-Instruct-v0.2", "mistral"),
    ("meta-llama/Llama-2-7b-chat-hf", "llama"),
    ("gpt2", "gpt"),
    ("openai-community/gpt2", "gpt"),
    ("EleutherAI/gpt-neox-20b", "gpt"),
    ("EleutherAI/pythia-70m", "gpt"),
    ("bert-base-uncased", "bert"),
    ("roberta-base", "roberta"),
    ("google/flan-t5-small", "t5"),
    ("t5-small", "t5"),
    ("google/gemma-2b-it", "gemma"),
    ("tiiuae/falcon-7b", "falcon"),
    ("bigscience/bloom-560m", "bloom"),
    ("facebook/opt-125m", "opt"),
    ("sentence-transformers/all-MiniLM-L6-v2", "bert"),
]


@pytest.mark.parametrize(("model_id", "expected"), ID_CASES)
def test_type_from_id_follows_the_seed_rules(model_id: str, expected: str) -> None:
    found = type_from_id(model_id)
    assert found is not None
    assert found.name == expected


@pytest.mark.parametrize(("model_id", "expected"), ID_CASES)
def test_infer_from_id_alone(model_id: str, expected: str) -> None:
    assert infer_model_type(model_id).name == expected


@pytest.mark.parametrize("model_id", ["my-org/my-model", "local/checkpoint-42", "facebook/bart-base"])
def test_ids_that_say_nothing_give_none(model_id: str) -> None:
    assert type_from_id(model_id) is None


@pytest.mark.parametrize(
    ("hf_model_type", "expected"),
    [
        ("llama", "llama"),
        ("mistral", "mistral"),
        ("mixtral", "mistral"),
        ("gemma", "gemma"),
        ("gemma2", "gemma"),
        ("gpt2", "gpt"),
        ("gpt_neox", "gpt"),
        ("gptj", "gpt"),
        ("falcon", "falcon"),
        ("bloom", "bloom"),
        ("opt", "opt"),
        ("t5", "t5"),
        ("bert", "bert"),
        ("roberta", "roberta"),
        ("xlm-roberta", "roberta"),
    ],
)
def test_config_model_type_decides_for_ids_that_say_nothing(hf_model_type: str, expected: str) -> None:
    assert infer_model_type("my-org/my-model", hf_model_type=hf_model_type).name == expected


def test_tinyllama_id_with_llama_config_stays_tinyllama() -> None:
    found = infer_model_type("TinyLlama/TinyLlama-1.1B-Chat-v1.0", hf_model_type="llama")
    assert found.name == "tinyllama"
    assert found.prompt_format is PromptFormat.ZEPHYR


def test_config_wins_over_an_id_of_another_family() -> None:
    assert infer_model_type("someone/llama-lookalike", hf_model_type="gpt2").name == "gpt"
    assert infer_model_type("my/bert-ish-t5", hf_model_type="t5").name == "t5"


def test_override_wins_over_id_and_config() -> None:
    assert infer_model_type("gpt2", hf_model_type="gpt2", override="llama").name == "llama"
    assert infer_model_type("my-org/my-model", override="tiny_llama").name == "tinyllama"
    assert infer_model_type("my-org/my-model", override=" Mistral ").name == "mistral"


def test_unknown_override_is_an_error_naming_model_type() -> None:
    with pytest.raises(UnsupportedModelTypeError) as info:
        infer_model_type("gpt2", override="mamba")
    assert info.value.param == "model_type"
    assert "mamba" in info.value.message
    assert "tinyllama" in info.value.message  # lists what is supported


def test_an_architecture_outside_the_families_gets_the_generic_type_of_its_files() -> None:
    # Whether transformers loads it is the worker's answer (tests/worker/model/test_architectures.py).
    assert infer_model_type("my-org/my-model", hf_model_type="mamba").name == "causal"
    qwen3 = {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]}
    assert infer_model_type("Qwen/Qwen3-0.6B", hf_model_type="qwen3",
                            generic=type_from_architecture(qwen3)).name == "causal"


@pytest.mark.parametrize(
    ("config", "sentence_transformers", "expected"),
    [
        ({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]}, False, "causal"),
        # Qwen3-Embedding: a causal architecture with sentence-transformers files
        ({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]}, True, "embedding"),
        ({"model_type": "gemma3", "vision_config": {"model_type": "siglip_vision_model"}}, False, "vision"),
        ({"model_type": "bart", "is_encoder_decoder": True}, False, "seq2seq"),
        ({"model_type": "modernbert", "architectures": ["ModernBertModel"]}, False, "embedding"),
        ({"model_type": "modernbert", "architectures": ["ModernBertForMaskedLM"]}, False, "embedding"),
        (None, False, "causal"),  # a GGUF: only its header's architecture
    ],
)
def test_type_from_architecture_reads_the_files(
    config: dict[str, Any] | None, sentence_transformers: bool, expected: str
) -> None:
    assert type_from_architecture(config, sentence_transformers=sentence_transformers).name == expected


def test_the_seed_families_keep_their_rules_beside_the_generic_types() -> None:
    # The id decides nothing for an architecture outside the families: gpt-oss is no GPT-2.
    assert infer_model_type("openai/gpt-oss-20b", hf_model_type="gpt_oss").name == "causal"
    assert infer_model_type("mistralai/Ministral-3-3B-Instruct", hf_model_type="mistral3",
                            generic=MODEL_TYPES["vision"]).name == "vision"
    assert infer_model_type("google/gemma-3-1b-it", hf_model_type="gemma3_text").name == "gemma"
    assert infer_model_type("TinyLlama/TinyLlama-1.1B-Chat-v1.0", hf_model_type="llama").name == "tinyllama"


def test_no_id_match_and_no_config_is_an_error() -> None:
    with pytest.raises(UnsupportedModelTypeError, match=r"no config\.json model_type"):
        infer_model_type("my-org/my-model")


def test_type_from_hf_config_unknown_or_missing() -> None:
    assert type_from_hf_config(None) is None
    assert type_from_hf_config("") is None
    assert type_from_hf_config("mamba") is None


def test_get_model_type_aliases() -> None:
    assert get_model_type("gpt2") is MODEL_TYPES["gpt"]
    assert get_model_type("GPT_NEOX") is MODEL_TYPES["gpt"]
    assert get_model_type("tiny_llama") is MODEL_TYPES["tinyllama"]
    # Any transformers model_type of a family names it (the same map inference uses).
    assert get_model_type("mixtral") is MODEL_TYPES["mistral"]
    assert get_model_type("gemma3_text") is MODEL_TYPES["gemma"]


def test_tasks_and_formats_of_the_families() -> None:
    tasks = {name: t.task for name, t in MODEL_TYPES.items()}
    assert {n for n, task in tasks.items() if task is Task.EMBEDDING} == {"bert", "roberta", "embedding"}
    assert {n for n, task in tasks.items() if task is Task.SEQ2SEQ} == {"t5", "seq2seq"}
    formats = {name: t.prompt_format for name, t in MODEL_TYPES.items()}
    assert formats["llama"] is formats["mistral"] is PromptFormat.INST
    assert formats["gemma"] is PromptFormat.GEMMA
    assert {formats[n] for n in ("gpt", "falcon", "bloom", "opt", "t5", "base")} == {PromptFormat.PLAIN}


def test_google_bert_id_is_bert() -> None:
    found = type_from_id("google/bert_uncased_L-2_H-128_A-2")
    assert found is not None
    assert found.name == "bert"


def test_unknown_architecture_is_generic_not_the_ids_guess() -> None:
    assert infer_model_type("google/electra-small", hf_model_type="electra").name == "causal"


def test_default_quantization_is_none_only_for_types_bitsandbytes_cannot_take() -> None:
    from shared.model_types import MODEL_TYPES, default_quantization

    assert default_quantization(MODEL_TYPES["falcon"], "4bit") == "none"
    assert {default_quantization(t, "8bit") for n, t in MODEL_TYPES.items() if n != "falcon"} == {"8bit"}
