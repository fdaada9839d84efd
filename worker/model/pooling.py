"""How an embedding model turns token states into one vector: the pooling its sentence-transformers
files state (`modules.json`, then the Pooling module's `config.json`: mean, CLS, last token, max;
a Normalize module: L2 normalisation), or the seed's mean pooling, normalised, when it ships none."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from msgspec import Struct

from shared.errors import ModelLoadFailedError

PoolingMode = Literal["mean", "cls", "lasttoken", "max"]

# sentence-transformers' Pooling config keys, in its own order of precedence.
_MODE_KEYS: tuple[tuple[str, PoolingMode], ...] = (
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_lasttoken", "lasttoken"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_mean_tokens", "mean"),
)


class Pooling(Struct, frozen=True, kw_only=True):
    """One embedding model's pooling."""

    mode: PoolingMode = "mean"
    normalize: bool = True


def read_pooling(path: Path) -> Pooling:
    """The pooling the model folder `path` states; the seed's (mean, normalised) when none."""
    modules_file = Path(path) / "modules.json"
    if not modules_file.is_file():
        return Pooling()
    try:
        modules = json.loads(modules_file.read_bytes())
        types = [(str(m.get("type", "")), str(m.get("path", ""))) for m in modules]
        pooling_dir = next((p for t, p in types if t.endswith("Pooling")), None)
        config = json.loads((Path(path) / pooling_dir / "config.json").read_bytes()) if pooling_dir else {}
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelLoadFailedError(f"unreadable sentence-transformers files in {path}: {exc}") from exc
    mode: PoolingMode = next((m for key, m in _MODE_KEYS if config.get(key)), "mean")
    return Pooling(mode=mode, normalize=any(t.endswith("Normalize") for t, _ in types))


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """One vector per row of right-padded `hidden` [rows, width, dim] under `mask` [rows, width]."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if pooling.mode == "cls":
        pooled = hidden[:, 0]
    elif pooling.mode == "lasttoken":
        last = (mask.sum(dim=1) - 1).clamp(min=0)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    elif pooling.mode == "max":
        pooled = hidden.masked_fill(weights == 0, float("-inf")).amax(dim=1)
    else:
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    return torch.nn.functional.normalize(pooled, p=2, dim=-1) if pooling.normalize else pooled
