"""GGUF files (what llama.cpp and Ollama users have on disk) as ordinary model folders.

transformers reads a GGUF (`from_pretrained(..., gguf_file=...)`) by dequantizing every tensor and
converting the tokenizer, which takes minutes for a real model. So the first load converts the file
ONCE into a `save_pretrained` folder beside it, `.<name>.gguf.converted/` (hidden: the catalog lists
the GGUF's folder, not the cache), and every later load reads that folder in seconds. The folder
records the size and modification time of the file it came from and is rebuilt when they change.
A file lock beside the file makes two loads at once convert once. 4bit/8bit/none then apply to the
converted folder as to any model. A `chat_template.jinja` beside the .gguf is the model's chat
template (a base model's GGUF has none; it overrides the file's own).

Importing this module is cheap (no torch, no transformers): the worker host reads a GGUF's
architecture here to pick the model type before any worker starts. Conversion runs in the model
worker at load, or ahead of time with `python -m shared.gguf FILE` (what `make run` does).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import filelock

from shared.errors import (
    InvalidRequestError,
    ModelLoadFailedError,
    ModelNotFoundError,
    UnsupportedModelTypeError,
)
from shared.files import atomic_write

log = logging.getLogger(__name__)

SUFFIX = ".gguf"
TEMPLATE_NAME = "chat_template.jinja"  # transformers' file name for a folder's chat template
_STAMP = ".dukat-gguf.json"
_FORMAT = 1  # bump when the converted folder's layout changes: old caches are rebuilt
_LOCK_TIMEOUT_S = 1800.0  # a conversion of a large model on a slow disk
# llama.cpp's architecture names that differ from transformers' `config.json` model_type.
_HF_MODEL_TYPE = {
    "gemma3": "gemma3_text", "gptneox": "gpt_neox", "qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe",
}

Progress = Callable[[str], None]


# ---- finding the file --------------------------------------------------------------------------


def is_model_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def gguf_files(folder: Path) -> list[Path]:
    """The .gguf files directly in `folder`, sorted by name."""
    try:
        return sorted(p for p in Path(folder).iterdir() if p.suffix == SUFFIX and p.is_file())
    except OSError:
        return []


def pick_gguf(path: Path, gguf_file: str | None = None) -> Path | None:
    """The GGUF file that `path` names: the file itself, `gguf_file` (a name in the folder, or an
    absolute path), or the folder's only .gguf. None when `path` holds no GGUF at all."""
    path = Path(path)
    if path.is_file():
        return path if path.suffix == SUFFIX else None
    if gguf_file:
        chosen = Path(gguf_file) if Path(gguf_file).is_absolute() else path / gguf_file
        if not chosen.is_file():
            raise ModelNotFoundError(f"gguf_file {gguf_file!r} not found (no {chosen})", param="model")
        if chosen.suffix != SUFFIX:
            raise InvalidRequestError(f"gguf_file {gguf_file!r} is not a .gguf file", param="model")
        return chosen
    found = gguf_files(path)
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise InvalidRequestError(
            f"{path} holds several GGUF files ({names}); name one with \"gguf_file\" in the model's "
            "config entry",
            param="model",
        )
    return found[0] if found else None


def converted_folder(gguf: Path) -> Path:
    return gguf.parent / f".{gguf.name}.converted"


def is_converted(gguf: Path) -> bool:
    """Whether `gguf` has an up-to-date converted folder (a stat and a small read: no torch)."""
    folder = converted_folder(gguf)
    try:
        stamp = json.loads((folder / _STAMP).read_text())
    except (OSError, ValueError):
        return False
    return stamp == _stamp(gguf) and (folder / "config.json").is_file()


def _stamp(gguf: Path) -> dict[str, Any]:
    st = gguf.stat()
    return {"format": _FORMAT, "source": gguf.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


# ---- the header: architecture without reading the tensors --------------------------------------

# GGUF metadata value types: fixed widths; 8 is a string, 9 an array (the GGUF spec, v2 and v3).
_WIDTHS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def architecture(gguf: Path) -> str:
    """`general.architecture` of a GGUF file (llama.cpp's name: llama, gemma3, qwen2, ...).

    Reads the header only: llama.cpp writes this key first, so it is found in microseconds.
    """
    try:
        with open(gguf, "rb") as f:
            magic, version, _tensors, kv_count = struct.unpack("<4sIQQ", f.read(24))
            if magic != b"GGUF" or version not in (2, 3):
                raise InvalidRequestError(f"{gguf.name} is not a GGUF v2/v3 file", param="model")
            for _ in range(kv_count):
                key = _read_string(f)
                (value_type,) = struct.unpack("<I", f.read(4))
                if key == "general.architecture" and value_type == 8:
                    return _read_string(f)
                _skip_value(f, value_type)
    except (OSError, struct.error, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"cannot read the GGUF header of {gguf}: {exc}", param="model") from exc
    raise InvalidRequestError(f"{gguf.name} names no general.architecture", param="model")


def tensor_sizes(gguf: Path) -> list[tuple[str, int]]:
    """(name, element count) of every tensor of a GGUF file, from its tensor list only.

    The metadata before that list (a vocabulary of 262k strings for Gemma) is skipped, not parsed:
    gguf's own reader decodes all of it and takes seconds. Raises InvalidRequestError for a file
    that is not GGUF v2/v3.
    """
    try:
        with open(gguf, "rb") as f:
            magic, version, tensors, kv_count = struct.unpack("<4sIQQ", f.read(24))
            if magic != b"GGUF" or version not in (2, 3):
                raise InvalidRequestError(f"{gguf.name} is not a GGUF v2/v3 file", param="model")
            for _ in range(kv_count):
                f.seek(struct.unpack("<Q", f.read(8))[0], os.SEEK_CUR)  # the key
                _skip_value(f, struct.unpack("<I", f.read(4))[0])
            out = []
            for _ in range(tensors):
                name = _read_string(f)
                (dims,) = struct.unpack("<I", f.read(4))
                shape = struct.unpack(f"<{dims}Q", f.read(8 * dims))
                f.seek(12, os.SEEK_CUR)  # its type (u32) and data offset (u64)
                out.append((name, math.prod(shape)))
    except (OSError, struct.error, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"cannot read the GGUF header of {gguf}: {exc}", param="model") from exc
    return out


def hf_model_type(gguf: Path) -> str:
    """The transformers `model_type` the file converts to (what Dukat infers its model type from)."""
    if is_converted(gguf):
        config = json.loads((converted_folder(gguf) / "config.json").read_text())
        return str(config.get("model_type"))
    arch = architecture(gguf)
    return _HF_MODEL_TYPE.get(arch, arch)


def _read_string(f: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", f.read(8))
    return f.read(length).decode("utf-8")


def _skip_value(f: BinaryIO, value_type: int) -> None:
    if value_type in _WIDTHS:
        f.seek(_WIDTHS[value_type], os.SEEK_CUR)
    elif value_type == 8:
        (length,) = struct.unpack("<Q", f.read(8))
        f.seek(length, os.SEEK_CUR)
    elif value_type == 9:
        element_type, count = struct.unpack("<IQ", f.read(12))
        if element_type in _WIDTHS:
            f.seek(_WIDTHS[element_type] * count, os.SEEK_CUR)
        else:
            for _ in range(count):
                _skip_value(f, element_type)
    else:
        raise struct.error(f"unknown metadata value type {value_type}")


# ---- conversion --------------------------------------------------------------------------------


def prepare(gguf: Path, *, progress: Progress | None = None, show_bars: bool = False) -> Path:
    """The converted folder of `gguf`, converting it first unless it is already up to date.

    `progress` gets one line per step (and every ~10% of the tensors); `show_bars` leaves
    transformers' own progress bars on (for a terminal). Architectures transformers cannot read
    from GGUF are an UnsupportedModelTypeError (400).
    """
    gguf = Path(gguf).resolve()
    if is_converted(gguf) and _template_in_sync(gguf):
        return converted_folder(gguf)  # no lock: the folder may be read-only once converted
    report = progress or (lambda line: log.info("%s", line))
    try:
        lock = filelock.FileLock(str(gguf.parent / f".{gguf.name}.lock"), timeout=_LOCK_TIMEOUT_S)
        with lock:
            if not is_converted(gguf):  # another load may have converted it while we waited
                _convert(gguf, report, show_bars)
            _sync_template(gguf)
    except filelock.Timeout as exc:
        raise ModelLoadFailedError(f"another process is still converting {gguf.name}") from exc
    except PermissionError as exc:
        raise ModelLoadFailedError(
            f"cannot write the converted model beside {gguf} ({exc}); put the .gguf in a writable folder"
        ) from exc
    return converted_folder(gguf)


def _convert(gguf: Path, report: Progress, show_bars: bool) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    size = gguf.stat().st_size
    report(f"converting {gguf.name} ({size / 2**20:.0f} MiB, architecture {architecture(gguf)}) "
           "into a transformers folder, once; later loads reuse it")
    if not show_bars:
        transformers.utils.logging.disable_progress_bar()
    final = converted_folder(gguf)
    tmp = Path(tempfile.mkdtemp(prefix=f".{gguf.name}.", suffix=".tmp", dir=gguf.parent))
    try:
        with _unsupported_as_400(gguf):
            report("[1/3] reading the tokenizer")
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            report(f"[2/3] reading and dequantizing the tensors ({time.perf_counter() - started:.0f} s)")
            with _tensor_progress(report, show_bars):
                # float32: what the dequantized blocks are; a load later casts as its device wants.
                model = AutoModelForCausalLM.from_pretrained(
                    gguf.parent, gguf_file=gguf.name, dtype=torch.float32
                )
        report(f"[3/3] saving the converted folder ({time.perf_counter() - started:.0f} s)")
        _save_plain(model, tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _STAMP).write_text(json.dumps(_stamp(gguf)))
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the model from other users of models_dir
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(f"converted {gguf.name} in {time.perf_counter() - started:.0f} s into {final}")


def _template_in_sync(gguf: Path) -> bool:
    beside, inside = gguf.parent / TEMPLATE_NAME, converted_folder(gguf) / TEMPLATE_NAME
    try:
        return not beside.is_file() or (inside.is_file() and inside.read_bytes() == beside.read_bytes())
    except OSError:
        return False


def _sync_template(gguf: Path) -> None:
    """A `chat_template.jinja` beside the .gguf wins over the file's own template (a base model has
    none); copied into the converted folder when it differs, so editing it needs no conversion."""
    if _template_in_sync(gguf):
        return
    atomic_write(converted_folder(gguf) / TEMPLATE_NAME, (gguf.parent / TEMPLATE_NAME).read_bytes())


def _save_plain(model: Any, folder: Path) -> None:
    """`save_pretrained` of a GGUF-loaded model: transformers refuses to serialize a model it loaded
    through its GGUF quantizer, so the same weights go into a plain model built from the config."""
    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):  # the GGUF quantizer's: the saved weights are plain
        del config.quantization_config
    with torch.device("meta"):  # no memory and no random init for weights about to be replaced
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), assign=True)
    plain.tie_weights()
    if model.generation_config is not None:
        plain.generation_config = model.generation_config
    plain.save_pretrained(folder)


@contextmanager
def _unsupported_as_400(gguf: Path) -> Iterator[None]:
    try:
        yield
    except (ValueError, NotImplementedError) as exc:
        text = str(exc)
        if "not supported" in text or "Cannot build a tokenizer" in text:
            raise UnsupportedModelTypeError(
                f"transformers cannot read {gguf.name} (architecture {architecture(gguf)!r}) from GGUF: "
                f"{text}",
                param="model",
            ) from exc
        raise


@contextmanager
def _tensor_progress(report: Progress, show_bars: bool) -> Iterator[None]:
    """Report transformers' per-tensor dequantization loop as lines, every ~10%.

    That loop draws its own tqdm bar; in a worker (stderr is a pipe) a bar's carriage-return
    updates would make one unbounded log line, so it is swapped for a silent bar that reports.
    """
    if show_bars:
        yield
        return
    from tqdm import tqdm
    from transformers import modeling_gguf_pytorch_utils as legacy

    class _Lines(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self.done, self.total_items, self.next_report = 0, len(args[0]) if args else 0, 0.1

        def __iter__(self) -> Iterator[Any]:
            for item in self.iterable:
                yield item
                self.done += 1
                if self.total_items and self.done / self.total_items >= self.next_report:
                    report(f"      tensors {self.done}/{self.total_items}")
                    self.next_report += 0.1

    original = legacy.tqdm
    legacy.tqdm = _Lines
    try:
        yield
    finally:
        legacy.tqdm = original


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m shared.gguf", description="Convert a GGUF file once into its cached folder."
    )
    p.add_argument("gguf", type=Path)
    args = p.parse_args(argv)
    try:
        folder = prepare(args.gguf, progress=lambda line: print(line, flush=True), show_bars=True)
    except (InvalidRequestError, ModelLoadFailedError, ModelNotFoundError) as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
