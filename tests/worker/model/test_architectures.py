"""The model class comes from transformers' auto mappings; what this transformers cannot load is a
400 naming the architecture and the version; a model's own code runs only when trusted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import transformers

from shared.errors import UnsupportedModelTypeError
from shared.generation import GenerateRequest, Message, SamplingParams
from shared.model_types import MODEL_TYPES, Task
from tests.conftest import TINY_MODEL_CACHE
from tests.support.tiny_models import ensure_tiny_model
from worker.model.architectures import model_class
from worker.model.engine import Engine

_CONFIG_CODE = """from transformers import LlamaConfig


class CustomConfig(LlamaConfig):
    model_type = "dukat_custom"
"""
_MODEL_CODE = """from transformers import LlamaForCausalLM

from .configuration_custom import CustomConfig


class CustomForCausalLM(LlamaForCausalLM):
    config_class = CustomConfig
"""


def _with_model_type(tmp_path: Path, model_type: str, *, remote_code: bool = False) -> Path:
    path = tmp_path / model_type
    shutil.copytree(ensure_tiny_model("llama", TINY_MODEL_CACHE), path)
    config = {**json.loads((path / "config.json").read_text()), "model_type": model_type}
    if remote_code:
        config["auto_map"] = {"AutoConfig": "configuration_custom.CustomConfig",
                              "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}  # fmt: skip
        config["architectures"] = ["CustomForCausalLM"]
        (path / "configuration_custom.py").write_text(_CONFIG_CODE)
        (path / "modeling_custom.py").write_text(_MODEL_CODE)
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_the_auto_mappings_pick_the_class_for_the_task(tmp_path: Path) -> None:
    llama = ensure_tiny_model("llama", TINY_MODEL_CACHE)
    assert model_class(llama, Task.CHAT) is transformers.AutoModelForCausalLM
    assert model_class(llama, Task.EMBEDDING) is transformers.AutoModel
    mistral3 = _with_model_type(tmp_path, "mistral3")  # a multimodal checkpoint with no text-only class
    assert model_class(mistral3, Task.CHAT) is transformers.AutoModelForImageTextToText


def test_an_architecture_transformers_does_not_know_names_it_and_the_version(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModelTypeError) as info:
        model_class(_with_model_type(tmp_path, "brand_new_arch"), Task.CHAT)
    assert "'brand_new_arch'" in info.value.message and transformers.__version__ in info.value.message
    assert info.value.status == 400


def test_a_models_own_code_runs_only_when_trusted(tmp_path: Path) -> None:
    path = _with_model_type(tmp_path, "dukat_custom", remote_code=True)
    with pytest.raises(UnsupportedModelTypeError, match="DUKAT_TRUST_REMOTE_CODE"):
        Engine.load(path, model_type=MODEL_TYPES["causal"], quantization="none", device="cpu")
    engine = Engine.load(path, model_type=MODEL_TYPES["causal"], quantization="none", device="cpu",
                         trust_remote_code=True)  # fmt: skip
    try:
        result = engine.generate(GenerateRequest(messages=[Message(role="user", content="Hi")],
                                                 params=SamplingParams(max_new_tokens=4)))  # fmt: skip
    finally:
        engine.close()
    assert result.completion_tokens > 0
