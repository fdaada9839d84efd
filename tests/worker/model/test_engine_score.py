"""A cross-encoder (a one-label sequence classifier) loads as a rerank model and scores pairs as
sentence-transformers' CrossEncoder does; other tasks refuse to score, and it refuses to generate."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.errors import UnsupportedTaskError
from shared.generation import GenerateRequest, ScoreRequest
from shared.model_types import Task, config_model_type, get_model_type, infer_model_type
from tests.support.tiny_models import CROSS_ENCODER
from worker.model.engine import Engine

PAIRS = [
    ("What is the capital of France?", "Paris is the capital of France."),
    ("What is the capital of France?", "The baker opens the shop at six."),
    ("What is the capital of France?", ""),
]


def test_a_one_label_classifier_config_is_a_cross_encoder(tiny_model_dir: Callable[[str], Path]) -> None:
    config = json.loads((tiny_model_dir(CROSS_ENCODER) / "config.json").read_text())
    assert config_model_type(config) == CROSS_ENCODER
    assert (
        infer_model_type("BAAI/bge-reranker-base", hf_model_type=config_model_type(config)).task
        is Task.RERANK
    )
    assert infer_model_type("cross-encoder/ms-marco-MiniLM-L6-v2").task is Task.RERANK  # from the id alone
    two_labels = {**config, "id2label": {"0": "no", "1": "yes"}, "num_labels": 2}
    assert config_model_type(two_labels) == "bert"
    bert = json.loads((tiny_model_dir("bert") / "config.json").read_text())
    assert config_model_type(bert) == "bert"


def test_scores_match_sentence_transformers_cross_encoder(tiny_model_dir: Callable[[str], Path]) -> None:
    from sentence_transformers import CrossEncoder

    path = tiny_model_dir(CROSS_ENCODER)
    engine = Engine.load(path, model_type=get_model_type(CROSS_ENCODER), quantization="none", device="cpu")
    assert engine.info.task == "rerank"
    result = engine.score(ScoreRequest(pairs=PAIRS))
    expected = CrossEncoder(str(path), device="cpu").predict(PAIRS)
    assert result.scores == pytest.approx([float(x) for x in expected], abs=1e-5)
    assert all(0 < s < 1 for s in result.scores) and len(set(result.scores)) == len(PAIRS)
    assert result.prompt_tokens > 3 * 2  # [CLS] q [SEP] d [SEP] per pair
    with pytest.raises(UnsupportedTaskError, match="rerank"):
        engine.generate(GenerateRequest(prompt="hi"))


def test_an_embedding_model_refuses_to_score(tiny_model_dir: Callable[[str], Path]) -> None:
    engine = Engine.load(
        tiny_model_dir("bert"), model_type=get_model_type("bert"), quantization="none", device="cpu"
    )
    with pytest.raises(UnsupportedTaskError, match="cross-encoder"):
        engine.score(ScoreRequest(pairs=PAIRS))
