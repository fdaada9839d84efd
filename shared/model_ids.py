"""What a model id from a client may be: a name, never a path the client made up.

An id names a config entry (the operator may list local paths there: taken as they are), a folder
under `models_dir` or a hub repo. Anything else shaped like a path (`..`, empty segments, a leading
`/` or `~`, control characters, segments longer than a file name may be) is a 400 before any file
system call, so the answer cannot tell a client what exists on the server's disk.
"""

from __future__ import annotations

import re
from collections.abc import Container

from shared.errors import InvalidRequestError

# Letters, digits, `.`, `_`, `-` in segments joined by single `/`; a segment starts with a letter,
# digit or `_` (so never `.`, `..` or a hidden folder). Hub ids (`org/name`) fit.
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# The longest file name Linux (and most file systems) take.
MAX_SEGMENT_BYTES = 255
# A hub repo id as Dukat pulls it: `name` or `org/name`, each at most 96 characters.
HUB_ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9_][A-Za-z0-9._-]{0,95})?$"
_HUB_ID = re.compile(HUB_ID_PATTERN)
# A client's model id (what `check_model_id` lets through, config entries aside), for the OpenAPI document.
MODEL_ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}(/[A-Za-z0-9_][A-Za-z0-9._-]{0,254})*$"
_EXPLICIT_PATH_PREFIXES = ("/", "~", "./", "../", ".\\", "..\\")


def is_explicit_path(model_id: str) -> bool:
    """Whether `model_id` is written as a file system path (only the operator's config and the Python
    API may name those; a bare `org/name` is looked up under `models_dir`, never in the cwd)."""
    return model_id.startswith(_EXPLICIT_PATH_PREFIXES) or model_id in (".", "..")


def is_hub_id(model_id: str) -> bool:
    return _HUB_ID.fullmatch(model_id) is not None


def check_model_id(model_id: str, *, max_length: int, allowed: Container[str] = ()) -> str:
    """`model_id` when a client may name it; else an InvalidRequestError saying why.

    `allowed` (the config file's entries) are taken as they are: the operator wrote them.
    """
    if model_id in allowed:
        return model_id
    shown = repr(model_id[:80]) + ("..." if len(model_id) > 80 else "")
    problem = _problem(model_id, max_length)
    if problem:
        raise InvalidRequestError(f"invalid model id {shown}: {problem}", param="model")
    return model_id


def _problem(model_id: str, max_length: int) -> str | None:
    if not model_id:
        return "it is empty"
    if len(model_id) > max_length:
        return f"{len(model_id)} characters, more than the limit of {max_length} (DUKAT_MAX_MODEL_ID_LENGTH)"
    if _CONTROL.search(model_id):
        return "it contains control characters"
    if model_id.startswith(("/", "~", "\\")):
        return "a model id names a configured or downloaded model, not a path"
    segments = model_id.split("/")
    if "" in segments:
        return "empty path segment (a leading, trailing or double '/')"
    for segment in segments:
        if len(segment.encode()) > MAX_SEGMENT_BYTES:
            return f"a segment is longer than {MAX_SEGMENT_BYTES} bytes"
        if not _SEGMENT.fullmatch(segment):
            return (
                f"segment {segment[:40]!r} may hold only letters, digits, '.', '_' and '-' "
                "and must start with a letter, digit or '_'"
            )
    return None
