"""Embeddings from the tiny BERT and RoBERTa: pooled, normalised, deterministic, checked inputs."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.errors import ContextLengthExceededError, InvalidRequestError
from shared.generation import EmbedRequest
from shared.model_types import get_model_type
from tests.worker.conftest import EngineFor
from worker.model.engine import Engine


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_vectors_are_normalised_deterministic_and_distinct(engine_for: EngineFor, family: str) -> None:
    engine = engine_for(family)
    result = engine.embed(
        EmbedRequest(inputs=["The weather is sunny.", "Paris is in France.", "The weather is sunny."])
    )
    first, second, again = result.vectors
    assert len(first) == 64  # the tiny models' hidden size
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-5) for v in result.vectors)
    assert first == again
    assert _cosine(first, second) < 0.999
    assert engine.embed(EmbedRequest(inputs=["The weather is sunny."])).vectors[0] == pytest.approx(
        first, abs=1e-6
    )


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_token_counts_include_the_special_tokens(engine_for: EngineFor, family: str) -> None:
    engine = engine_for(family)
    tokenizer = engine._loaded.tokenizer  # type: ignore[union-attr]
    texts: list[str | list[int]] = ["hello world", "a"]
    result = engine.embed(EmbedRequest(inputs=texts))
    assert result.prompt_tokens == sum(len(tokenizer(t).input_ids) for t in ("hello world", "a"))


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_token_id_input_embeds_like_the_same_text(engine_for: EngineFor, family: str) -> None:
    engine = engine_for(family)
    tokenizer = engine._loaded.tokenizer  # type: ignore[union-attr]
    text = "The river runs through the valley."
    ids = tokenizer(text, add_special_tokens=False).input_ids
    from_text = engine.embed(EmbedRequest(inputs=[text]))
    from_ids = engine.embed(EmbedRequest(inputs=[ids]))
    assert from_ids.vectors[0] == pytest.approx(from_text.vectors[0], abs=1e-6)
    assert from_ids.prompt_tokens == from_text.prompt_tokens


def test_padding_in_a_batch_does_not_change_a_vector(engine_for: EngineFor) -> None:
    engine = engine_for("bert")
    texts: list[str | list[int]] = [
        f"sentence number {i} " + "and more words " * (i % 7) for i in range(40)
    ]  # > one batch
    together = engine.embed(EmbedRequest(inputs=texts)).vectors
    for i in (0, 6, 33, 39):
        alone = engine.embed(EmbedRequest(inputs=[texts[i]])).vectors[0]
        assert alone == pytest.approx(together[i], abs=1e-5)


def test_token_id_outside_the_vocabulary_is_refused(engine_for: EngineFor) -> None:
    with pytest.raises(InvalidRequestError, match="outside this model's vocabulary") as caught:
        engine_for("bert").embed(EmbedRequest(inputs=[[5, 6], [7, 100_000]]))
    assert caught.value.param == "input"
    with pytest.raises(InvalidRequestError, match="token id -1"):
        engine_for("bert").embed(EmbedRequest(inputs=[[-1]]))


def test_input_longer_than_the_context_is_refused(engine_for: EngineFor) -> None:
    with pytest.raises(ContextLengthExceededError, match="maximum context length is 512 tokens"):
        engine_for("roberta").embed(EmbedRequest(inputs=["short", "word " * 600]))
    with pytest.raises(ContextLengthExceededError, match=r"input\[0\]"):
        engine_for("bert").embed(EmbedRequest(inputs=[[10] * 511]))  # 511 + [CLS] + [SEP]


def test_empty_input_list_is_refused(engine_for: EngineFor) -> None:
    with pytest.raises(InvalidRequestError, match="must not be empty"):
        engine_for("bert").embed(EmbedRequest(inputs=[]))


def test_8bit_embedding_model_embeds_close_to_full_precision(tiny_model_dir: Callable[[str], Path]) -> None:
    path = tiny_model_dir("bert")
    full = Engine.load(path, model_type=get_model_type("bert"), quantization="none", device="cpu")
    int8 = Engine.load(path, model_type=get_model_type("bert"), quantization="8bit", device="cpu")
    request = EmbedRequest(inputs=["The weather is sunny."])
    assert _cosine(full.embed(request).vectors[0], int8.embed(request).vectors[0]) > 0.9


def test_empty_string_with_a_tokenizer_adding_no_special_tokens_is_a_400(
    tiny_model_dir: Callable[[str], Path],
) -> None:
    from transformers import AutoModel, AutoTokenizer

    from worker.model.embedding import Embedder

    path = tiny_model_dir("bert")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.backend_tokenizer.post_processor = None  # no [CLS]/[SEP]: "" becomes zero tokens
    assert tokenizer("", add_special_tokens=True).input_ids == []
    embedder = Embedder(AutoModel.from_pretrained(path), tokenizer, context_length=512)
    assert len(embedder.embed(EmbedRequest(inputs=["some text"])).vectors) == 1
    with pytest.raises(InvalidRequestError, match=r"input\[1\] is empty") as caught:
        embedder.embed(EmbedRequest(inputs=["some text", ""]))
    assert caught.value.param == "input"
