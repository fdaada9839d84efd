"""The JSON model config file: descriptions, quantization, default parameters and the default model.

The seed's format, exactly:

    {"models": {"<id>": {"description": str, "quantization": "4bit" | "8bit" | "none",
                         "default_parameters": {"temperature": ..., ...}, "model_type": str,
                         "gguf_file": str (Dukat's addition, optional)}},
     "default_model": "<id>" | null}

Keys a user added that Dukat does not know (top level, in entries, in default_parameters) are
kept on rewrite. An invalid file is an `InvalidConfigError` naming the field, never a silent reset:
at start-up it stops the server (naming the file); broken later by an edit, the last good config
stays in force, the log says why, `problem` tells the API, and writes are refused until it is
fixed (clients never see the file's path). Writes are read-modify-write under a file lock, through a
temp file in the same folder and `os.replace`, so readers see the old file or the new one.
"""

from __future__ import annotations

import copy
import difflib
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import filelock
import msgspec
from msgspec import Meta, Struct, field

from shared.errors import DukatError, InternalError, InvalidConfigError
from shared.files import atomic_write
from shared.generation import SamplingParams, params_from_mapping
from shared.keep_alive import parse_keep_alive
from shared.model_types import get_model_type
from shared.settings import QUANTIZATIONS, Quantization

log = logging.getLogger(__name__)
# How errors that may reach a client name the file (its path is the operator's business).
_CLIENT_NAME = "file"
LOCK_TIMEOUT_S = 60.0


class ModelEntry(Struct, kw_only=True):
    description: str = ""
    # None: not set here; the request or the `default_quantization` setting decides.
    quantization: Quantization | None = None
    # Kept as written (unknown keys included); `sampling_params()` is the validated view.
    default_parameters: dict[str, Any] = field(default_factory=dict)
    model_type: str | None = None
    # Which .gguf file of the model's folder to load (or an absolute path); see shared/gguf.py.
    gguf_file: str | None = None
    # How long the model stays loaded when idle (Ollama's keep_alive: "5m", seconds, 0, -1 = forever);
    # None: DUKAT_KEEP_ALIVE.
    keep_alive: str | float | None = None
    # This model's range for an inference key's keep_alive (None: DUKAT_KEEP_ALIVE_FLOOR / _CEILING):
    # a ceiling of -1 lets inference keys pin it, a floor of 0 lets them unload it.
    keep_alive_floor: str | float | None = None
    keep_alive_ceiling: str | float | None = None
    # Workers serving the model, each on another host where there are several; None: one.
    replicas: Annotated[int, Meta(ge=1)] | None = None
    # Keys of the entry Dukat does not know, written back as they were.
    extra: dict[str, Any] = field(default_factory=dict)

    def sampling_params(self) -> SamplingParams:
        return params_from_mapping(self.default_parameters)


class ModelConfig(Struct, kw_only=True):
    models: dict[str, ModelEntry] = field(default_factory=dict)
    default_model: str | None = None
    # Top-level keys Dukat does not know, written back as they were.
    extra: dict[str, Any] = field(default_factory=dict)

    def default_or(self, setting: str | None) -> str | None:
        """The model a request naming none gets: the file's `default_model`, else `setting`
        (DUKAT_DEFAULT_MODEL)."""
        return self.default_model or setting


_ENTRY_FIELDS = (
    "description", "quantization", "default_parameters", "model_type", "gguf_file", "keep_alive",
    "keep_alive_floor", "keep_alive_ceiling", "replicas",
)  # fmt: skip
_TOP_FIELDS = ("models", "default_model")


class _FieldError(Exception):
    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where


def decode_config(data: bytes, source: str = "<config>") -> ModelConfig:
    """Parse and validate a config file's bytes; `source` names the file in errors."""
    try:
        raw = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise InvalidConfigError(f"invalid model config {source}: {_where_in_text(str(exc), data)}") from None
    try:
        return _config_from_raw(raw)
    except _FieldError as exc:
        raise InvalidConfigError(f"invalid model config {source}: {exc}", param=exc.where) from None


def encode_config(config: ModelConfig) -> bytes:
    """The file's bytes: known keys in the seed's order, then the user's extra keys; 2-space indent."""
    models = {model_id: _entry_to_raw(entry) for model_id, entry in config.models.items()}
    extra = {k: v for k, v in config.extra.items() if k not in _TOP_FIELDS}
    raw = {"models": models, "default_model": config.default_model, **extra}
    return msgspec.json.format(msgspec.json.encode(raw), indent=2) + b"\n"


def _config_from_raw(raw: Any) -> ModelConfig:
    if not isinstance(raw, dict):
        raise _FieldError("top level", f"expected an object, got {_type_name(raw)}")
    models = raw.get("models", {})
    if not isinstance(models, dict):
        raise _FieldError("models", f"expected an object, got {_type_name(models)}")
    default_model = raw.get("default_model")
    if default_model is not None and not isinstance(default_model, str):
        raise _FieldError("default_model", f"expected a string or null, got {_type_name(default_model)}")
    return ModelConfig(
        models={model_id: _entry_from_raw(model_id, value) for model_id, value in models.items()},
        default_model=default_model,
        extra={k: v for k, v in raw.items() if k not in _TOP_FIELDS},
    )


def _entry_from_raw(model_id: str, raw: Any) -> ModelEntry:
    where = f"models[{msgspec.json.encode(model_id).decode()}]"
    if not isinstance(raw, dict):
        raise _FieldError(where, f"expected an object, got {_type_name(raw)}")
    quantization = raw.get("quantization")
    if quantization is not None and quantization not in QUANTIZATIONS:
        got = msgspec.json.encode(quantization).decode()
        raise _FieldError(f"{where}.quantization", f"expected one of {', '.join(QUANTIZATIONS)}, got {got}")
    known = {k: v for k, v in raw.items() if k in _ENTRY_FIELDS}
    try:
        entry = msgspec.convert(known, ModelEntry)
    except msgspec.ValidationError as exc:
        raise _field_error(where, exc) from None
    entry.extra = {k: v for k, v in raw.items() if k not in _ENTRY_FIELDS}
    _check_entry(where, entry)
    return entry


def _check_entry(where: str, entry: ModelEntry) -> None:
    try:
        entry.sampling_params()
    except msgspec.ValidationError as exc:
        raise _field_error(f"{where}.default_parameters", exc) from None
    if entry.model_type is not None:
        try:
            get_model_type(entry.model_type)
        except DukatError as exc:
            raise _FieldError(f"{where}.model_type", exc.message) from None
    for key in ("keep_alive", "keep_alive_floor", "keep_alive_ceiling"):
        if (value := getattr(entry, key)) is not None:
            try:
                parse_keep_alive(value)
            except ValueError as exc:
                raise _FieldError(f"{where}.{key}", str(exc)) from None


def _entry_to_raw(entry: ModelEntry) -> dict[str, Any]:
    raw: dict[str, Any] = {"description": entry.description}
    if entry.quantization is not None:
        raw["quantization"] = entry.quantization
    raw["default_parameters"] = entry.default_parameters
    if entry.model_type is not None:
        raw["model_type"] = entry.model_type
    if entry.gguf_file is not None:
        raw["gguf_file"] = entry.gguf_file
    for key in ("keep_alive", "keep_alive_floor", "keep_alive_ceiling", "replicas"):
        if getattr(entry, key) is not None:
            raw[key] = getattr(entry, key)
    return {**raw, **{k: v for k, v in entry.extra.items() if k not in _ENTRY_FIELDS}}


def _field_error(where: str, exc: msgspec.ValidationError) -> _FieldError:
    # msgspec says "Expected `str`, got `int` - at `$.description`"; users read models["x"].description.
    reason, _, path = str(exc).partition(" - at `$")
    return _FieldError(where + path.rstrip("`"), reason[0].lower() + reason[1:])


def _where_in_text(message: str, data: bytes) -> str:
    match = re.search(r"\(byte (\d+)\)", message)
    if not match:
        return message
    offset = int(match.group(1))
    line = data[:offset].count(b"\n") + 1
    column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
    return f"{message[: match.start()].rstrip()} at line {line}, column {column}"


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else "a number"
    )


_EMPTY = ModelConfig()


class ConfigStore:
    """The config file at `path`: cached reads, locked atomic read-modify-write updates."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = filelock.FileLock(f"{self.path}.lock", timeout=LOCK_TIMEOUT_S)
        # (stat key, parsed config): a hot path re-parses only when the file changed.
        self._cache: tuple[tuple[int, ...], ModelConfig] | None = None
        # (stat key, why) of a file broken by an edit, while the last good config stays in force.
        self._broken: tuple[tuple[int, ...], str] | None = None

    @property
    def problem(self) -> str | None:
        """Why the file on disk is not the config in force (an edit broke it), or None."""
        self.view()
        return self._broken[1] if self._broken else None

    def read(self) -> ModelConfig:
        """The current config (a copy: mutate it freely). A missing file is created empty."""
        return copy.deepcopy(self.view())

    def view(self) -> ModelConfig:
        """The current config, shared and NOT to be mutated: for hot paths (a copy of 100 entries
        costs more than the rest of a request). Re-parsed only when the file changed."""
        key = self._stat_key() or self._create()
        cached = self._cache
        if cached is not None and (cached[0] == key or (self._broken and self._broken[0] == key)):
            return cached[1]
        try:
            config = decode_config(self.path.read_bytes(), _CLIENT_NAME)
        except InvalidConfigError as exc:
            if cached is None:  # nothing good to keep serving: at start-up, stop loudly (naming the file)
                decode_config(self.path.read_bytes(), str(self.path))
                raise
            self._broken = (key, exc.message)
            log.error("model config %s: %s; the last good config stays in force", self.path, exc.message)
            return cached[1]
        if self._broken is not None:
            log.warning("model config %s is valid again", self.path)
            self._broken = None
        self._cache = (key, config)
        _warn_unknown_keys(self.path, config)
        return config

    def _create(self) -> tuple[int, ...]:
        self.update(lambda config: None)
        return self._stat_key() or ()

    def update(self, fn: Callable[[ModelConfig], ModelConfig | None]) -> ModelConfig:
        """Apply `fn` to the current config under the lock and write the result atomically.

        `fn` may mutate its argument and return None, or return a new config. The file is not
        rewritten when nothing changed.
        """
        try:
            with self._lock:
                return self._update_locked(fn)
        except filelock.Timeout:
            log.error("model config %s stayed locked for %.0f s", self.path, LOCK_TIMEOUT_S)
            message = f"the model config file stayed locked for {LOCK_TIMEOUT_S:.0f} s"
            raise InternalError(message) from None

    def get_entry(self, model_id: str) -> ModelEntry | None:
        return self.read().models.get(model_id)

    def set_entry(self, model_id: str, entry: ModelEntry) -> ModelConfig:
        def put(config: ModelConfig) -> None:
            config.models[model_id] = entry

        return self.update(put)

    def set_default_model(self, model_id: str | None) -> ModelConfig:
        def put(config: ModelConfig) -> None:
            config.default_model = model_id

        return self.update(put)

    def remove_entry(self, model_id: str) -> bool:
        """Remove the entry (and clear `default_model` when it named it); False when there was none."""
        removed = False

        def drop(config: ModelConfig) -> None:
            nonlocal removed
            removed = config.models.pop(model_id, None) is not None
            if removed and config.default_model == model_id:
                config.default_model = None

        self.update(drop)
        return removed

    def _update_locked(self, fn: Callable[[ModelConfig], ModelConfig | None]) -> ModelConfig:
        # Always from disk here: the cache may be a tick behind another process's write.
        old = self.path.read_bytes() if self.path.exists() else None
        try:
            config = decode_config(old, _CLIENT_NAME) if old is not None else copy.deepcopy(_EMPTY)
        except InvalidConfigError as exc:
            message = f"{exc.message}; changes are refused until the file is fixed by hand"
            raise InvalidConfigError(message, param=exc.param) from None
        result = fn(config)
        config = config if result is None else result
        data = encode_config(config)
        try:
            config = decode_config(data, _CLIENT_NAME)  # what a reader would get; validates fn's edits
        except InvalidConfigError as exc:
            raise InvalidConfigError(f"refusing to write {exc.message}", param=exc.param) from None
        if data != old:
            atomic_write(self.path, data)
        key = self._stat_key()
        self._cache = (key, config) if key is not None else None
        self._broken = None
        return copy.deepcopy(config)

    def _stat_key(self) -> tuple[int, ...] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


def _warn_unknown_keys(path: Path, config: ModelConfig) -> None:
    """An entry's key Dukat does not know is kept as written, but most likely a misspelling: say
    so once per version of the file, naming the closest known key."""
    known = [f for f in _ENTRY_FIELDS if f != "extra"]
    for model_id, entry in config.models.items():
        for key in entry.extra:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            meant = f"; did you mean {close[0]!r}?" if close else f" (known keys: {', '.join(known)})"
            log.warning(
                "model config %s: models[%r] has a key Dukat does not know, %r: kept as written, "
                "not used%s", path, model_id, key, meant,
            )  # fmt: skip
