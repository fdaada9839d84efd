"""Which transformers class loads a model folder, for its task: transformers' own auto mappings
decide, so any architecture this transformers knows loads without a Dukat entry.

A causal LM loads with AutoModelForCausalLM, an image-text-to-text checkpoint (Gemma 3, Mistral 3,
Qwen2.5-VL) with AutoModelForImageTextToText, an encoder-decoder with AutoModelForSeq2SeqLM, an
embedding model with AutoModel (its pooling: worker/model/pooling.py). What this transformers cannot
load, or could only with the model's own code (`auto_map`, run only for the models
DUKAT_TRUST_REMOTE_CODE names), is an UnsupportedModelTypeError naming the architecture and the
transformers version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shared.errors import ModelLoadFailedError, UnsupportedModelTypeError
from shared.model_types import Task

# The auto class of each task, most fitting first: a chat model may be a multimodal checkpoint
# with no text-only class (Mistral 3), and a vision type a text-only one.
_CLASSES: dict[Task, tuple[tuple[str, str], ...]] = {
    Task.CHAT: (
        ("AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"),
        ("AutoModelForImageTextToText", "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES"),
    ),
    Task.VISION: (
        ("AutoModelForImageTextToText", "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES"),
        ("AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"),
    ),
    Task.SEQ2SEQ: (("AutoModelForSeq2SeqLM", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES"),),
    Task.EMBEDDING: (("AutoModel", "MODEL_MAPPING_NAMES"),),
    Task.RERANK: (("AutoModelForSequenceClassification", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"),),
}


def model_class(path: Path, task: Task, *, trust_remote_code: bool = False) -> Any:
    """The transformers auto class that loads the folder `path` for `task`."""
    import transformers
    from transformers.models.auto import modeling_auto
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    config = _config(path)
    arch = config.get("model_type")
    if not isinstance(arch, str) or not arch:
        raise UnsupportedModelTypeError(f"{path / 'config.json'} names no model_type", param="model")
    version = transformers.__version__
    if arch not in CONFIG_MAPPING_NAMES:
        auto_map = config.get("auto_map") or {}
        if trust_remote_code and isinstance(auto_map, dict):
            named = next((name for name, _ in _CLASSES[task] if name in auto_map), None)
            if named is not None:  # the model's own class, through transformers' auto class
                return getattr(transformers, named)
        raise UnsupportedModelTypeError(_unknown_message(arch, version, remote=bool(config.get("auto_map"))),
                                        param="model")
    for class_name, mapping in _CLASSES[task]:
        if arch in getattr(modeling_auto, mapping):
            return getattr(transformers, class_name)
    raise UnsupportedModelTypeError(
        f"architecture {arch!r} has no {task.value} model class in transformers {version}; "
        "Dukat serves chat (causal LM, image-text-to-text), seq2seq and embedding models",
        param="model",
    )


def _unknown_message(arch: str, version: str, *, remote: bool) -> str:
    if remote:
        return (
            f"architecture {arch!r} is not in transformers {version}: it needs the model's own code "
            "(trust_remote_code), which runs only for models DUKAT_TRUST_REMOTE_CODE names"
        )
    return f"architecture {arch!r} is not one transformers {version} can load (a newer transformers may)"


def _config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((Path(path) / "config.json").read_bytes())
    except (OSError, ValueError) as exc:
        raise ModelLoadFailedError(f"cannot load the model in {path}: {exc}") from exc
    return config if isinstance(config, dict) else {}
