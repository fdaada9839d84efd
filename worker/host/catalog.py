"""The models on disk under `models_dir`: downloaded ones, `save_pretrained` folders put there by hand,
and folders holding .gguf files (shared/gguf.py).

A model is a folder holding a `config.json`, at `models_dir/<id>` where the id is its path relative
to `models_dir` (`gpt2`, `TinyLlama/TinyLlama-1.1B-Chat-v1.0`). Downloads use the same layout, so a
hub id and its folder always match, and add a marker file recording where they came from.
Listing is cheap: it reads each `config.json` (and greps `tokenizer_config.json` for a chat
template) and stats files; it never loads a model.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
from msgspec import Struct

from shared import adapters, gguf
from shared.errors import DukatError
from shared.host_api import LocalModel
from shared.model_types import (
    CROSS_ENCODER,
    ModelType,
    config_model_type,
    infer_model_type,
    type_from_architecture,
)

# Written by `worker.host.downloads` into every folder it downloads.
MARKER_NAME = ".dukat-download.json"
# models_dir/<org>/<name> is the deepest usual layout; one more level for hand-made groupings.
_MAX_DEPTH = 3
_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model",
)
# Where a folder keeps its chat template: transformers 5's files, else (4) inside tokenizer_config.json.
_TEMPLATE_FILES = (gguf.TEMPLATE_NAME, "chat_template.json")
_TOKENIZER_CONFIG = "tokenizer_config.json"


class DownloadMarker(Struct, kw_only=True, forbid_unknown_fields=True):
    repo_id: str
    revision: str  # as asked ("main", a tag, a commit)
    commit: str  # what it resolved to
    files: list[str]
    complete: bool  # False from the start of a download until its last file is in place


def list_local_models(models_dir: Path) -> list[LocalModel]:
    """Every model folder under `models_dir`, sorted by id; a broken one is listed with its error.

    A download that has not finished (failed, cut, or still running) is not a model: not listed.
    """
    root = Path(models_dir)
    if not root.is_dir():
        return []
    models = (_describe(root, folder) for folder in _model_folders(root, depth=1))
    return [m for m in models if m.complete]




def local_gguf(model_id: str, models_dir: Path, gguf_file: str | None = None) -> Path | None:
    """The GGUF file `model_id` names on disk: a local .gguf file or a folder holding one, or
    `models_dir/<id>` holding one (hand-placed, or a complete `dukat pull --file`); None if none."""
    path = Path(model_id).expanduser()
    if path.exists():  # like transformers: a local path wins over a hub id of the same spelling
        return gguf.pick_gguf(path, gguf_file)
    parts = model_id.split("/")
    if model_id.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return None  # never look outside models_dir
    folder = Path(models_dir).joinpath(*parts)
    marker = read_marker(folder)
    if not folder.is_dir() or (marker is not None and not marker.complete):
        return None
    return gguf.pick_gguf(folder, gguf_file)


def read_marker(folder: Path) -> DownloadMarker | None:
    """The download marker of `folder`, or None when there is none (or it is unreadable)."""
    try:
        return msgspec.json.decode((folder / MARKER_NAME).read_bytes(), type=DownloadMarker)
    except (OSError, msgspec.DecodeError):
        return None


def _model_folders(folder: Path, depth: int) -> Iterator[Path]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir():
            continue  # .cache, half-built temp folders, ...
        path = Path(entry.path)
        if gguf.is_model_folder(path) or gguf.gguf_files(path) or adapters.is_adapter_folder(path):
            yield path  # never descend into a model: its subfolders (1_Pooling/...) have config.json too
        elif depth < _MAX_DEPTH:
            yield from _model_folders(path, depth + 1)


def _describe(root: Path, folder: Path) -> LocalModel:
    model_id = folder.relative_to(root).as_posix()
    if adapters.is_adapter_folder(folder):
        return describe_adapter(model_id, folder)
    model_type, error = _model_type(model_id, folder)
    marker = read_marker(folder)
    complete = marker is None or marker.complete
    if not complete and error is None:
        error = "download incomplete: download the model again to finish it"
    return LocalModel(
        id=model_id,
        path=str(folder),
        model_type=model_type.name if model_type else None,
        architecture=_architecture(folder),
        task=model_type.task.value if model_type else None,
        size_bytes=_size_on_disk(folder),
        has_tokenizer=any((folder / name).is_file() for name in _TOKENIZER_FILES),
        has_chat_template=_has_chat_template(folder),
        downloaded=marker is not None,
        revision=marker.revision if marker else None,
        complete=complete,
        error=error,
    )


def describe_adapter(model_id: str, folder: Path) -> LocalModel:
    """A LoRA adapter: served by a worker of its base model (shared/adapters.py)."""
    marker = read_marker(folder)
    error = None
    try:
        config = adapters.read_config(folder)
        base, error = config.base_model_name_or_path, config.refusal()
        if not base:
            error = f"its {adapters.CONFIG_NAME} names no base_model_name_or_path"
    except DukatError as exc:
        base, error = None, exc.message
    return LocalModel(
        id=model_id,
        path=str(folder),
        model_type=None,
        architecture="lora",
        task="chat",
        size_bytes=_size_on_disk(folder),
        has_tokenizer=False,
        has_chat_template=False,
        downloaded=marker is not None,
        revision=marker.revision if marker else None,
        complete=marker is None or marker.complete,
        error=error,
        base_model=base,
    )


def hf_model_type(path: Path) -> str | None:
    """The transformers `model_type` of a model's files: a .gguf's (or a folder of them) from its
    header, as the worker converts it at load; a folder's from its config.json (None: it names none).
    Raises DukatError for an unreadable .gguf, OSError or ValueError for an unreadable config.json."""
    is_folder = gguf.is_model_folder(path)
    found = path if path.suffix == gguf.SUFFIX else None if is_folder else gguf.pick_gguf(path)
    if found is not None:
        return gguf.hf_model_type(found)
    return config_model_type(_config_json(path))


def model_type_of(model_id: str, path: Path, override: str | None = None) -> ModelType:
    """The Dukat model type of the files at `path` (see shared/model_types.py). Raises DukatError
    for an unreadable .gguf or an unknown override, OSError or ValueError for a bad config.json."""
    hf_type = hf_model_type(path)
    config = None if path.suffix == gguf.SUFFIX or not path.is_dir() else _config_json(path)
    generic = type_from_architecture(config, sentence_transformers=(path / "modules.json").is_file())
    return infer_model_type(model_id, hf_model_type=hf_type, override=override, generic=generic)


def _config_json(folder: Path) -> dict[str, Any] | None:
    if not (folder / "config.json").is_file():
        return None
    config = json.loads((folder / "config.json").read_bytes())
    return config if isinstance(config, dict) else None


def _model_type(model_id: str, folder: Path) -> tuple[ModelType | None, str | None]:
    try:
        return model_type_of(model_id, folder), None
    except DukatError as exc:
        return None, exc.message
    except (OSError, ValueError) as exc:
        return None, f"unreadable config.json: {exc}"


def _architecture(folder: Path) -> str | None:
    try:
        found = hf_model_type(folder)
        if found == CROSS_ENCODER:  # the type a reranker's head gives it; its architecture is its encoder's
            found = (_config_json(folder) or {}).get("model_type")
        return found
    except (DukatError, OSError, ValueError):
        return None


def _has_chat_template(folder: Path) -> bool:
    if any((folder / name).is_file() for name in _TEMPLATE_FILES):
        return True
    if any((folder / "additional_chat_templates").glob("*.jinja")):
        return True
    try:
        # A substring test avoids parsing a file that can hold megabytes of added tokens.
        return b'"chat_template"' in (folder / _TOKENIZER_CONFIG).read_bytes()
    except OSError:
        return False


def chat_template(folder: Path) -> str | None:
    """The tokenizer's chat template, from the files _has_chat_template looks for."""
    with contextlib.suppress(OSError):
        return (folder / _TEMPLATE_FILES[0]).read_text()
    for name in (*_TEMPLATE_FILES[1:], _TOKENIZER_CONFIG):
        template = json_object(folder / name).get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        if isinstance(template, str):
            return template
    return None


def json_object(path: Path) -> dict[str, Any]:
    """A JSON file's object; empty when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _size_on_disk(folder: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size  # follows links into an HF cache
            except OSError:
                continue  # removed while we looked
    return total
