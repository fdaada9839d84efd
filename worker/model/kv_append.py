"""A decode step's new key and value columns appended to a transformers cache layer in place, with
room kept after them, instead of the layer's own `update` (a `torch.cat` of the whole layer per
token: on Gemma 3 270M at a 1,400-token context, ~23 MB copied per token, +4 ms a token).

The layer's `keys`/`values` become views of larger buffers. Whatever else replaces them (a join's
padding, a leave's row selection: kv_cache.PaddedBatch) makes new tensors, which the next append sees
(`layer.keys` is no longer the view it left) and copies once into new room. Semantics are the
layer's own: a DynamicLayer keeps every column; a DynamicSlidingWindowLayer returns the held columns
plus the new one for attention, then keeps the last `window - 1` and counts the token in
`cumulative_length`. Other layer kinds, and a sliding layer recording its past, use `update`.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch


class _Room:
    """A layer's buffers [rows, heads, capacity, dim] and the columns of them it holds."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        held = keys.shape[2]
        capacity = held + max(32, held // 4)  # amortized: a copy every quarter of the length
        self.keys = keys.new_empty(*keys.shape[:2], capacity, keys.shape[3])
        self.values = values.new_empty(*values.shape[:2], capacity, values.shape[3])
        self.keys[:, :, :held] = keys
        self.values[:, :, :held] = values
        self.start, self.end = 0, held
        self.view: torch.Tensor | None = None  # the layer's keys as last set here


class Appender:
    """Appends one column per row to cache layers, keeping each layer's room between steps."""

    def __init__(self) -> None:
        self._rooms: weakref.WeakKeyDictionary[Any, _Room] = weakref.WeakKeyDictionary()

    def __call__(self, layer: Any, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's keys and values for this token's attention, `k`/`v` [rows, heads, 1, dim] added."""
        kind = type(layer).__name__
        sliding = kind == "DynamicSlidingWindowLayer"
        if (kind != "DynamicLayer" and not sliding) or getattr(layer, "keys", None) is None or (
            sliding and layer.record_past
        ):
            return layer.update(k, v)
        room = self._rooms.get(layer)
        if room is None or room.view is not layer.keys or room.end == room.keys.shape[2]:
            room = _Room(layer.keys, layer.values)
            self._rooms[layer] = room
        room.keys[:, :, room.end] = k[:, :, 0]
        room.values[:, :, room.end] = v[:, :, 0]
        room.end += 1
        keys, values = room.keys[:, :, room.start : room.end], room.values[:, :, room.start : room.end]
        if sliding:
            layer.cumulative_length += 1
            room.start = max(room.start, room.end - (layer.sliding_window - 1))
        layer.keys = room.keys[:, :, room.start : room.end]
        layer.values = room.values[:, :, room.start : room.end]
        room.view = layer.keys
        return keys, values
