"""One model folder under `models_dir`, read for `dukat show` (architecture, parameters, context
length, chat template, license, size) and deleted for `dukat rm`. Reads files only: never loads
the model (parameters are counted from the safetensors headers). A folder of GGUF files is read
through its converted folder once there is one (shared/gguf.py), else from the GGUF header."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from pathlib import Path

from shared import adapters, gguf
from shared.errors import InvalidRequestError, ModelNotFoundError
from shared.gguf import is_model_folder
from shared.host_api import ModelDetails
from shared.model_types import CONTEXT_LENGTH_KEYS
from worker.host.catalog import (
    _model_type,
    _size_on_disk,
    chat_template,
    describe_adapter,
    json_object,
    read_marker,
)
from worker.host.safetensors_header import read_header

_LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE", "COPYING")


def model_folder(models_dir: Path, model_id: str) -> Path:
    """`models_dir/<id>` when it holds a model; never a path outside `models_dir`."""
    parts = model_id.split("/")
    if model_id.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise InvalidRequestError(f"{model_id!r} is not a model id under models_dir", param="model")
    folder = Path(models_dir).joinpath(*parts)
    found = is_model_folder(folder) or adapters.is_adapter_folder(folder)
    if not (found or (folder.is_dir() and gguf.gguf_files(folder))):
        raise ModelNotFoundError(f"model {model_id!r} is not in this host's models_dir", param="model")
    return folder


def describe(models_dir: Path, model_id: str) -> ModelDetails:
    folder = model_folder(models_dir, model_id)
    if adapters.is_adapter_folder(folder):
        return _describe_adapter(model_id, folder)
    weights, gguf_name = folder, None
    if not is_model_folder(folder):  # GGUF: the converted folder holds the transformers files
        found = gguf.pick_gguf(folder)
        gguf_name = found.name if found else None
        if found is not None and gguf.is_converted(found):
            weights = gguf.converted_folder(found)
    config = json_object(weights / "config.json")
    model_type, error = _model_type(model_id, folder)
    marker = read_marker(folder)
    architecture = next(iter(config.get("architectures") or []), None)
    return ModelDetails(
        model_id=model_id,
        path=str(folder),
        model_type=model_type.name if model_type else None,
        task=model_type.task.value if model_type else None,
        architecture=architecture or (f"GGUF {gguf_name}" if gguf_name else None),
        gguf_file=gguf_name,
        parameters=count_parameters(weights),
        context_length=next((config[k] for k in CONTEXT_LENGTH_KEYS if isinstance(config.get(k), int)), None),
        dtype=config.get("dtype") or config.get("torch_dtype"),
        chat_template=chat_template(folder) or chat_template(weights),
        license=license_of(folder),
        size_bytes=_size_on_disk(folder),
        revision=marker.revision if marker else None,
        error=error,
    )


def _describe_adapter(model_id: str, folder: Path) -> ModelDetails:
    """A LoRA adapter: its base, rank and the layers it adapts (shared/adapters.py)."""
    listed = describe_adapter(model_id, folder)  # the catalog's reading of its config
    config = json_object(folder / adapters.CONFIG_NAME)
    targets = config.get("target_modules")
    shown = ", ".join(targets) if isinstance(targets, list) else targets
    return ModelDetails(
        model_id=model_id,
        path=str(folder),
        task="chat",
        architecture=f"LoRA adapter of {listed.base_model} (rank {config.get('r')}, on {shown})",
        size_bytes=listed.size_bytes,
        revision=listed.revision,
        error=listed.error,
        base_model=listed.base_model,
    )


def delete(models_dir: Path, model_id: str) -> int:
    """Remove the model's folder (a link to one: only the link); returns the bytes freed."""
    folder = model_folder(models_dir, model_id)
    if folder.is_symlink():
        folder.unlink()
        freed = 0
    else:
        freed = _size_on_disk(folder)
        shutil.rmtree(folder)
    # `org/` folders left empty by their last model go too.
    root, parent = Path(models_dir).resolve(), folder.parent
    while parent.resolve() != root and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent
    return freed


def count_parameters(folder: Path) -> int | None:
    """Elements of every tensor in the safetensors files (header only); None without safetensors."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        header = read_header(path)
        if header is None:
            return None
        total += sum(math.prod(t["shape"]) for t in header.values())
    return total


def license_of(folder: Path) -> str | None:
    """The model card's `license:` (its YAML front matter), else the name of a license file."""
    with contextlib.suppress(OSError):
        card = (folder / "README.md").read_text(errors="replace")
        if card.startswith("---"):
            front = card[3:].split("\n---", 1)[0]
            for line in front.splitlines():
                key, _, value = line.partition(":")
                if key.strip() == "license" and value.strip():
                    return value.strip().strip("'\"")
    for name in sorted(os.listdir(folder)):
        if name in _LICENSE_FILES or "TERMS" in name.upper():
            return f"see {name} in the model's folder"
    return None


