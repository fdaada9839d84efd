"""Embedding models pool as their sentence-transformers files say (modules.json, 1_Pooling): mean,
CLS, last token, normalised or not; a decoder embedder (Qwen3-Embedding's layout: a causal
architecture with last-token pooling) loads as an embedding model with no config entry."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from shared.generation import EmbedRequest
from tests.conftest import TINY_MODEL_CACHE
from tests.support.tiny_models import ensure_tiny_model
from tests.support.tiny_modern_models import ensure_modern_model
from worker.host.catalog import model_type_of
from worker.model.engine import Engine
from worker.model.pooling import Pooling, read_pooling

TEXTS = ["The weather is sunny.", "Paris is in France and the Seine runs through it."]


def _with_sentence_transformers(src: Path, dest: Path, mode: str, *, normalize: bool) -> Path:
    shutil.copytree(src, dest)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    (dest / "modules.json").write_text(json.dumps(modules))
    (dest / "1_Pooling").mkdir()
    keys = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens",
            "lasttoken": "pooling_mode_lasttoken"}
    config = {key: key == keys[mode] for key in keys.values()} | {"word_embedding_dimension": 64}
    (dest / "1_Pooling" / "config.json").write_text(json.dumps(config))
    return dest  # fmt: skip


def _states(path: Path, text: str) -> torch.Tensor:
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.inference_mode():
        return model(input_ids=ids).last_hidden_state[0]


@pytest.mark.parametrize(
    ("mode", "normalize"), [("cls", True), ("mean", False), ("lasttoken", True)]
)
def test_an_encoder_pools_as_its_sentence_transformers_files_say(
    tmp_path: Path, mode: str, normalize: bool
) -> None:
    path = _with_sentence_transformers(ensure_tiny_model("bert", TINY_MODEL_CACHE), tmp_path / "m", mode,
                                       normalize=normalize)
    assert read_pooling(path) == Pooling(mode=mode, normalize=normalize)  # type: ignore[arg-type]
    engine = Engine.load(path, model_type=model_type_of("tiny/bert", path), quantization="none", device="cpu")
    try:
        vectors = engine.embed(EmbedRequest(inputs=TEXTS)).vectors  # padded together: pooling must mask
    finally:
        engine.close()
    for text, vector in zip(TEXTS, vectors, strict=True):
        states = _states(path, text)
        want = {"cls": states[0], "mean": states.mean(dim=0), "lasttoken": states[-1]}[mode]
        if normalize:
            want = torch.nn.functional.normalize(want, dim=-1)
        assert vector == pytest.approx(want.tolist(), abs=1e-4)
        assert math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-4) is normalize


def test_a_decoder_embedder_loads_as_an_embedding_model_with_last_token_pooling(tmp_path: Path) -> None:
    qwen3 = ensure_modern_model("Qwen/Qwen3-0.6B", TINY_MODEL_CACHE)
    path = _with_sentence_transformers(qwen3, tmp_path / "Qwen3-Embedding", "lasttoken", normalize=True)
    model_type = model_type_of("Qwen/Qwen3-Embedding-0.6B", path)
    assert (model_type.name, model_type.task.value) == ("embedding", "embedding")
    engine = Engine.load(path, model_type=model_type, quantization="none", device="cpu")
    try:
        vectors = engine.embed(EmbedRequest(inputs=TEXTS)).vectors
    finally:
        engine.close()
    for text, vector in zip(TEXTS, vectors, strict=True):
        want = torch.nn.functional.normalize(_states(path, text)[-1], dim=-1)
        assert vector == pytest.approx(want.tolist(), abs=1e-4)


def test_a_model_without_sentence_transformers_files_keeps_the_seeds_mean_pooling(tmp_path: Path) -> None:
    assert read_pooling(ensure_tiny_model("bert", TINY_MODEL_CACHE)) == Pooling(mode="mean", normalize=True)
