"""Downloads from the Hugging Face Hub (or whatever `HF_ENDPOINT` / `endpoint=` names) into `models_dir`.

Layout: a model `org/name` lands in `models_dir/org/name`, a plain folder next to hand-placed
`save_pretrained` folders, with a marker (`worker.host.catalog.MARKER_NAME`) recording the repo id,
revision, commit and files. A folder holds one revision: downloading another replaces the files.

Only what inference needs is fetched: config, tokenizer, generation config, chat templates,
sentence-transformers pooling, and one set of weights (safetensors, else .bin).

Files are fetched one after the other with `huggingface_hub.hf_hub_download` (what
`snapshot_download` runs per file) so progress can name the current file. Interruptions
(huggingface_hub 2.4): a dropped connection is retried inside the call with a Range request from
the last complete 10 MiB chunk; a later call skips the files already complete, but a file that was
cut when the call failed starts over (huggingface_hub deletes partial files).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterable
from fnmatch import fnmatch
from pathlib import Path

import msgspec
from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from shared import adapters
from shared.errors import (
    InsufficientStorageError,
    InvalidRequestError,
    ModelNotFoundError,
    ModelTooLargeError,
    UnsupportedModelTypeError,
)
from shared.files import atomic_write
from shared.gguf import is_model_folder
from shared.model_ids import is_explicit_path
from worker.host.catalog import MARKER_NAME, DownloadMarker, read_marker
from worker.host.download_progress import DownloadTracker, ProgressCallback
from worker.host.hub_errors import hub_errors

_SUPPORT_FILES = frozenset({
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "spiece.model",
    "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json",
    # sentence-transformers: how an embedding model pools its token vectors
    "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
})
_SUPPORT_PATTERNS = ("additional_chat_templates/*.jinja", "*.tiktoken", "*_Pooling/config.json")
# First group with weights wins: transformers' own names, then any safetensors, then .bin.
# Top level only: original/, onnx/, flax and tf weights stay behind.
_WEIGHT_GROUPS = (
    ("model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json"),
    ("*.safetensors", "*.safetensors.index.json"),
    ("pytorch_model.bin", "pytorch_model-*-of-*.bin", "pytorch_model.bin.index.json"),
)


def download_model(
    model_id: str,
    models_dir: Path,
    *,
    revision: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    progress: ProgressCallback | None = None,
    show_progress_bar: bool = False,
    file: str | None = None,
    max_bytes: int | None = None,
) -> Path:
    """The folder of `model_id` under `models_dir`, downloaded or brought up to date.

    A local model folder given as `model_id` is returned as is. `token` defaults to `HF_TOKEN`
    (read by huggingface_hub), `endpoint` to `HF_ENDPOINT`. `progress` is called in this thread as
    bytes arrive. Raises ModelNotFoundError, GatedModelError, HubUnreachableError,
    UnsupportedModelTypeError (a repo without transformers weights) or InvalidRequestError (bad id);
    ModelTooLargeError (over `max_bytes`) and InsufficientStorageError before the first byte.
    `file` fetches that one file of the repo instead (a .gguf), beside the ones already there.
    """
    local = _local_folder(model_id)
    if local is not None:
        return local
    _check_repo_id(model_id)
    dest = Path(models_dir) / model_id
    hub = (endpoint or constants.ENDPOINT).rstrip("/")
    with hub_errors(model_id, revision, hub):
        api = HfApi(endpoint=endpoint, token=token, library_name="dukat")
        info = api.model_info(
            model_id, revision=revision, files_metadata=True, timeout=constants.HF_HUB_ETAG_TIMEOUT
        )
        sizes = {s.rfilename: s.size or 0 for s in info.siblings or []}
        if file:
            files = _one_file(model_id, sizes, file, read_marker(dest))
        else:
            files = _checked_selection(model_id, sizes)
        wanted = {f: sizes[f] for f in files}
        check_room(model_id, sum(wanted.values()), _bytes_present(dest, wanted), _free_bytes(dest), max_bytes)
        marker = DownloadMarker(
            repo_id=model_id, revision=revision or "main", commit=str(info.sha), files=files, complete=False
        )
        _begin(dest, marker)
        fetch = [file] if file else files
        tracker = DownloadTracker(model_id, {f: sizes[f] for f in fetch}, progress, show_progress_bar)
        try:
            for name in fetch:
                tracker.start(name)
                hf_hub_download(
                    model_id, name, revision=marker.commit, local_dir=dest, endpoint=endpoint, token=token,
                    library_name="dukat", tqdm_class=tracker.bar_class,
                )
                tracker.finish(name)
            _write_marker(dest, msgspec.structs.replace(marker, complete=True))
            tracker.report(done=True)
        finally:
            tracker.close()
    return dest


def check_room(model_id: str, total: int, present: int, free: int, max_bytes: int | None) -> None:
    """Refuse a pull of `total` bytes over the cap, or whose missing part does not fit in `free`."""
    if max_bytes is not None and total > max_bytes:
        raise ModelTooLargeError(
            f"model {model_id!r} is {total} bytes, more than the limit of {max_bytes} bytes "
            "(DUKAT_MAX_MODEL_BYTES)",
            param="model",
        )
    if total - present > free:
        raise InsufficientStorageError(
            f"model {model_id!r} needs {total - present} more bytes, but only {free} bytes are free "
            "where models_dir lies"
        )


def _bytes_present(dest: Path, sizes: dict[str, int]) -> int:
    """Bytes of the wanted files already complete in `dest` (a resumed or updated download)."""
    present = 0
    for name, size in sizes.items():
        with contextlib.suppress(OSError):
            present += size if (dest / name).stat().st_size == size else 0
    return present


def _free_bytes(dest: Path) -> int:
    folder = dest
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def resolve_model_path(model_id: str, models_dir: Path) -> Path | None:
    """Where `model_id` is on disk: a local model folder, or `models_dir/<id>` holding a model
    (hand-placed, or a complete download); None when it is not here."""
    local = _local_folder(model_id)
    if local is not None:
        return local
    parts = model_id.split("/")
    if model_id.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return None  # never look outside models_dir
    folder = Path(models_dir).joinpath(*parts)
    if not is_model_folder(folder):
        return None
    marker = read_marker(folder)
    return folder if marker is None or marker.complete else None


def select_files(names: Iterable[str]) -> list[str]:
    """The files of a repo that inference needs: the small ones first (a broken repo fails fast,
    and an interrupted download keeps them), then the weights, each in the repo's order."""
    names = list(names)
    top = [n for n in names if "/" not in n]
    weights: set[str] = set()
    for group in _WEIGHT_GROUPS:
        chosen = {n for n in top if any(fnmatch(n, p) for p in group)}
        if any(not n.endswith(".json") for n in chosen):
            weights = chosen
            break
    support = {n for n in names if n in _SUPPORT_FILES or any(fnmatch(n, p) for p in _SUPPORT_PATTERNS)}
    return [n for n in names if n in support and n not in weights] + [n for n in names if n in weights]


def _checked_selection(model_id: str, sizes: dict[str, int]) -> list[str]:
    if adapters.CONFIG_NAME in sizes and adapters.WEIGHTS_NAME in sizes and "config.json" not in sizes:
        return [adapters.CONFIG_NAME, adapters.WEIGHTS_NAME]  # a LoRA adapter (shared/adapters.py)
    files = select_files(sizes)
    has_weights = any(f.endswith((".safetensors", ".bin")) for f in files)
    if "config.json" not in files or not has_weights:
        ggufs = sorted(n for n in sizes if n.endswith(".gguf"))
        if ggufs:
            raise UnsupportedModelTypeError(
                f"{model_id!r} holds GGUF files, not a transformers model: pull one with "
                f"`dukat pull {model_id} --file {ggufs[0]}` (its .gguf files: {', '.join(ggufs[:8])})",
                param="model",
            )
        sample = ", ".join(sorted(sizes)[:8]) or "none"
        raise UnsupportedModelTypeError(
            f"{model_id!r} has no config.json and safetensors/.bin weights that transformers can load "
            f"(files: {sample})",
            param="model",
        )
    return files


def _one_file(model_id: str, sizes: dict[str, int], file: str, old: DownloadMarker | None) -> list[str]:
    """The marker's files for a one-file pull: those pulled before (kept, not stale) and `file`."""
    if file not in sizes:
        ggufs = ", ".join(sorted(n for n in sizes if n.endswith(".gguf"))) or "none"
        raise ModelNotFoundError(
            f"{model_id!r} has no file {file!r} (its .gguf files: {ggufs})", param="file"
        )
    kept = [f for f in old.files if f in sizes] if old is not None else []
    return [*dict.fromkeys([*kept, file])]


def _local_folder(model_id: str) -> Path | None:
    # Only an id written as a path (`/…`, `~…`, `./…`) is one: a bare `org/name` is never looked up in
    # the working directory. The gateway lets clients name such paths only when the config lists them.
    if not is_explicit_path(model_id):
        return None
    path = Path(model_id).expanduser()
    return path.resolve() if is_model_folder(path) else None


def _check_repo_id(model_id: str) -> None:
    try:
        validate_repo_id(model_id)
    except HFValidationError:
        raise InvalidRequestError(
            f"{model_id!r} is neither a local model folder nor a Hugging Face model id like 'org/name'",
            param="model",
        ) from None


def _begin(dest: Path, marker: DownloadMarker) -> None:
    """Mark `dest` incomplete (unless it already holds exactly this commit) and remove the files
    of a previous revision that this one does not have."""
    old = read_marker(dest)
    if old is not None and old.complete and old.commit == marker.commit and old.files == marker.files:
        return
    dest.mkdir(parents=True, exist_ok=True)
    _write_marker(dest, marker)
    stale = set(old.files) - set(marker.files) if old is not None else set()
    root = dest.resolve()
    for name in stale:
        path = (dest / name).resolve()
        if path.is_relative_to(root):
            path.unlink(missing_ok=True)


def _write_marker(dest: Path, marker: DownloadMarker) -> None:
    atomic_write(dest / MARKER_NAME, msgspec.json.encode(marker))
