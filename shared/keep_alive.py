"""Ollama's `keep_alive`: how long a model stays loaded after its last request.

A duration string ("5m", "1h30m", "90s", "500ms"), a number of seconds, 0 (unload once the request
is done) or a negative value (keep it loaded forever: the model is pinned). Parsed to seconds here,
once, at the edge (settings, config file, request body); the wire and the host carry seconds.
"""

from __future__ import annotations

import math
import re

FOREVER = -1.0
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
# What parse_keep_alive takes as a string, as a JSON Schema pattern (upper case too: it lowers it).
KEEP_ALIVE_PATTERN = r"^\s*[+-]?([0-9]+(\.[0-9]+)?|([0-9]+(\.[0-9]+)?([mM][sS]|[sSmMhH]))+)\s*$"


def parse_keep_alive(value: str | float | int) -> float:
    """Seconds (negative: forever). Raises ValueError with a message for the user."""
    if isinstance(value, bool):
        raise ValueError(f"keep_alive must be a duration or a number of seconds, not {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip().lower()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        if re.fullmatch(r"\d+(\.\d+)?", body):
            seconds = sign * float(body)
        elif body and re.fullmatch(f"(?:{_PART.pattern})+", body):
            seconds = sign * sum(float(n) * _UNITS[u] for n, u in _PART.findall(body))
        else:
            raise ValueError(f'keep_alive {value!r} is not a duration ("5m", "1h", "30s"), seconds, 0 or -1')
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"keep_alive {value!r} is not a finite number")
    return FOREVER if seconds < 0 else seconds


def describe(seconds: float | None) -> str:
    if seconds is None:
        return "unset"
    return "forever" if seconds < 0 else f"{seconds:g}s"
