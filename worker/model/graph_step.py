"""The decode step over static buffers, replayed as CUDA graphs on a GPU: one graph per batch-size
bucket and cache capacity, captured once (every bucket at load), so a step costs a few copies and
one replay instead of ~12 kernel launches per layer from Python.

Why: on an H100 a ~1.1B Llama decoded one stream at 53 tok/s (~18 ms a token) on its forward, where
reading its weights takes 0.66 ms: the step was bound by Python and launches, not by the GPU. A
graph needs fixed shapes and addresses, so the rows' keys and values live in buffers of
[max rows, kv heads, capacity, head dim] per layer; a bucket of B rows uses their first B rows and
every row attends over all `capacity` columns with a mask (the columns it has not got are masked).
A step writes every row's new column at the timeline's width (rows are left-padded to one timeline
by kv_cache.PaddedBatch, so that column is the same for all), as the model's cache layers would.

Why by hand and not `torch.compile(mode="reduce-overhead")`: compiling a decoder takes tens of
seconds at every load and recompiles on new shapes; capturing the eager step should take tens of
milliseconds per graph (two warm-up runs and a capture: not yet timed on a GPU) and keeps the step
the code that decode_step.py's tests hold to the model's forward.

The model's cache stays the truth between composition changes: joins, leaves and prefills keep
working on it (PaddedBatch calls `settle` first, which leaves the cache's layers as views of the
buffers), and the next step copies it into the buffers again. Growing past the capacity doubles it
(new buffers; those graphs are captured when first used). Without a GPU the same static step runs
eagerly: that path is what the CPU tests check against the model's forward; the capture itself
runs only on CUDA (`make gpu-check`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from worker.model.decode_step import DecodeStep, _Layer, _Unsupported, _unsupported, decode_step_for

logger = logging.getLogger(__name__)

# Rows per graph: a batch of R rows runs in the smallest bucket that holds it.
BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
FIRST_CAPACITY = 512  # columns a batch's buffers start with (doubled as a timeline outgrows them)


class GraphStep(DecodeStep):
    """DecodeStep's call (`(ids [rows, 1], positions [rows], mask or None, cache)` -> logits) over
    static buffers: replayed graphs where `graphs` (CUDA), the same static step run eagerly elsewhere.

    The buffers hold at most `budget_tokens` (rows x capacity, a load's memory estimate counts them):
    a batch whose bucket and timeline do not fit decodes on DecodeStep's own path (launched op by op
    on the model's cache) until it fits again."""

    def __init__(
        self, model: Any, *, max_rows: int, graphs: bool, budget_tokens: int,
        capacity: int = FIRST_CAPACITY, buckets: tuple[int, ...] = BUCKETS,
    ) -> None:
        super().__init__(model)
        self._graphs = graphs
        self._buckets = (*(b for b in buckets if b < max_rows), max_rows)
        self._limit = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 20)
        self._first, self._budget = min(capacity, self._limit), budget_tokens
        self._device = next(model.parameters()).device
        self._kv_dtype = self._final.dtype  # the hidden states' dtype, which the cache holds
        self._windows = _windows(model)
        rows = self._buckets[-1]
        self._ids = torch.zeros(rows, 1, dtype=torch.long, device=self._device)
        self._positions = torch.zeros(rows, dtype=torch.long, device=self._device)
        self._column = torch.zeros(1, dtype=torch.long, device=self._device)  # the new token's column
        self._rows = self._capacity = 0  # the buffers' shape
        self._keys: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []
        self._seen = torch.zeros(0, dtype=torch.bool, device=self._device)  # [rows, capacity]: real columns
        self._columns = torch.zeros(0, dtype=torch.long, device=self._device)
        self._replays: dict[tuple[int, int], Callable[[], torch.Tensor]] = {}
        self._pool: Any = None  # the graphs' shared memory pool (at the first capture)
        self.failed: str | None = None  # why graphs could not be captured (then: op by op)
        # (the cache's first keys, rows, width) that the buffers hold
        self._bound: tuple[Any, int, int] | None = None
        first = self._fit(1, 0)
        if first is None:
            raise _Unsupported(
                f"DUKAT_CUDA_GRAPH_KV_TOKENS ({budget_tokens}) holds no {self._first}-column row"
            )
        self._allocate(max(b for b in self._buckets if b * first <= budget_tokens), first)

    def warm(self) -> dict[int, float]:
        """Capture (or run once) every bucket's step that the buffers hold, so no request pays for
        a new batch size; seconds per bucket. The buffers are cleared after."""
        took = {}
        with torch.inference_mode():
            for bucket in self._buckets:
                if bucket <= self._rows and self.failed is None:
                    start = time.perf_counter()
                    self._column.fill_(0)
                    self._try(bucket)
                    took[bucket] = time.perf_counter() - start
            self._clear()
        if self.failed is not None:
            self._keys, self._values = [], []
        return took

    def __call__(
        self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None, cache: Any
    ) -> torch.Tensor:
        rows = ids.shape[0]
        if self.failed is not None or (self.adapters is not None and self.adapters.active()):
            self.settle(cache)  # LoRA rows add their deltas op by op, on the model's cache
            self._bound = None
            return super().__call__(ids, positions, mask, cache)
        bound = self._bound
        current = bound is not None and bound[0] is cache.layers[0].keys and bound[1] == rows
        # The cache's layers lag the buffers until `settle`; an edited (or new) cache is copied in again.
        width = bound[2] if current and bound is not None else _width(cache)
        bucket = next(b for b in self._buckets if b >= rows)
        if not current or bucket > self._rows or width + 1 > self._capacity:
            self.settle(cache)
            capacity = self._fit(bucket, width + 1)
            if capacity is None:  # past the budget: the model's cache, op by op
                self._bound = None
                return super().__call__(ids, positions, mask, cache)
            if bucket > self._rows or capacity > self._capacity:
                self._allocate(max(b for b in self._buckets if b * capacity <= self._budget), capacity)
            self._load(cache, mask, width)
        self._ids[:rows].copy_(ids)
        self._positions[:rows].copy_(positions)
        self._column.fill_(width)
        out = self._try(bucket)
        if out is None:  # the buffers still hold the cache up to `width`: it takes them back
            self.settle(cache)
            self._bound, self._keys, self._values = None, [], []
            return super().__call__(ids, positions, mask, cache)
        self._bound = (cache.layers[0].keys, rows, width + 1)
        return out[:rows].clone()

    def settle(self, cache: Any) -> None:
        """Leave `cache`'s layers holding what the buffers hold (views of them), as the model's own
        layers would after these steps: before a join, a leave or a capacity change edits them."""
        if self._bound is None or self._bound[0] is not cache.layers[0].keys:
            return
        _, rows, width = self._bound
        parts = zip(cache.layers, self._windows, self._keys, self._values, strict=True)
        for layer, window, keys, values in parts:
            start = 0 if window is None else max(0, width - (window - 1))
            layer.keys, layer.values = keys[:rows, :, start:width], values[:rows, :, start:width]
            if window is not None:
                layer.cumulative_length = width
        self._bound = (cache.layers[0].keys, rows, width)

    def _fit(self, bucket: int, columns: int) -> int | None:
        """The capacity for `bucket` rows of `columns` (the buffers' own where they hold them, else
        the first capacity doubled until they fit); None past the context or the budget."""
        if bucket <= self._rows and columns <= self._capacity:
            return self._capacity
        capacity = self._first
        while capacity < columns:
            capacity *= 2
        capacity = min(capacity, self._limit)
        return capacity if columns <= capacity and bucket * capacity <= self._budget else None

    def _load(self, cache: Any, mask: torch.Tensor | None, width: int) -> None:
        """Copy the cache's columns into the buffers (zeros elsewhere)."""
        rows = cache.layers[0].keys.shape[0]
        self._clear()
        for layer, keys, values in zip(cache.layers, self._keys, self._values, strict=True):
            held = layer.keys.shape[2]  # a sliding layer holds the timeline's last columns
            keys[:rows, :, width - held : width] = layer.keys
            values[:rows, :, width - held : width] = layer.values
        if mask is None:
            self._seen[:rows, :width] = True
        else:
            self._seen[:rows, :width] = mask[:, :width].bool()
        self._bound = (cache.layers[0].keys, rows, width)

    def _clear(self) -> None:
        for buffer in (*self._keys, *self._values):
            buffer.zero_()
        self._seen.zero_()
        self._seen[:, 0] = True  # a row past the batch's sees one (zero) column: no empty softmax

    def _allocate(self, rows: int, capacity: int) -> None:
        self._replays = {}  # graphs hold the old buffers' addresses
        self._keys, self._values = [], []  # the old ones go before the new ones take memory
        for layer in self._layers:
            shape = (rows, layer.kv_heads, capacity, layer.head_dim)
            self._keys.append(torch.zeros(shape, dtype=self._kv_dtype, device=self._device))
            self._values.append(torch.zeros(shape, dtype=self._kv_dtype, device=self._device))
        self._seen = torch.zeros(rows, capacity, dtype=torch.bool, device=self._device)
        self._seen[:, 0] = True
        self._columns = torch.arange(capacity, device=self._device)
        self._rows, self._capacity = rows, capacity

    def _try(self, bucket: int) -> torch.Tensor | None:
        """The bucket's step, or None once a capture failed (a layer whose kernels synchronise with
        the host, say): from then on this step runs op by op on the model's cache."""
        try:
            return self._replay(bucket)
        except Exception as exc:
            if not self._graphs:
                raise
            self.failed = f"{type(exc).__name__}: {exc}"
            self._replays = {}
            logger.warning("decode graphs off for this model (%s): decoding op by op", self.failed)
            return None

    def _replay(self, bucket: int) -> torch.Tensor:
        key = (bucket, self._capacity)
        replay = self._replays.get(key)
        if replay is None:
            replay = self._capture(bucket) if self._graphs else (lambda: self._static(bucket))
            self._replays[key] = replay
        return replay()

    def _capture(self, bucket: int) -> Callable[[], torch.Tensor]:
        """The bucket's step as a CUDA graph. Its warm-up runs repeat the step on the inputs already
        set (the same column written with the same values), so capturing mid-serving is safe."""
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # kernel selection and lazy initialisation happen outside the graph
                self._static(bucket)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self._static(bucket)

        def replay() -> torch.Tensor:
            graph.replay()
            return out

        return replay

    def _static(self, rows: int) -> torch.Tensor:
        """The step of the buffers' first `rows` rows: fixed shapes, no host synchronisation."""
        column = self._column
        seen = self._seen[:rows]
        seen.index_fill_(1, column, True)
        floor = torch.finfo(self._kv_dtype).min  # a large negative, not -inf: no NaN from an empty row
        # A sliding layer's row sees its window's last columns (the new one included), as
        # DynamicSlidingWindowLayer returns them.
        bias: dict[int | None, torch.Tensor] = {}
        for window in set(self._windows):
            sees = seen if window is None else seen & (self._columns > column - window)
            bias[window] = torch.zeros(rows, 1, 1, self._capacity, dtype=self._kv_dtype,
                                       device=self._device).masked_fill_(~sees[:, None, None], floor)

        def attend(layer: _Layer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            keys, values = self._keys[layer.index][:rows], self._values[layer.index][:rows]
            keys.index_copy_(2, column, k)
            values.index_copy_(2, column, v)
            return torch.nn.functional.scaled_dot_product_attention(
                q, keys, values, attn_mask=bias[self._windows[layer.index]], scale=layer.scaling,
                enable_gqa=layer.kv_heads != layer.heads,
            )

        return self._layers_pass(self._ids[:rows], self._positions[:rows], attend, None)


def step_for(
    model: Any, graph_rows: int = 0, budget_tokens: int = 0
) -> tuple[DecodeStep | None, str | None]:
    """The decode step for `model`: on CUDA with `graph_rows`, a GraphStep for up to that many rows
    in buffers of `budget_tokens`; else decode_step.py's (None, why not) where it does not model
    this decoder."""
    if (why := _unsupported(model)) is not None:
        return None, why
    if not graph_rows or next(model.parameters()).device.type != "cuda":
        return decode_step_for(model)
    rope = getattr(model.config, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type")) in {"dynamic", "longrope"}:
        logger.info("decode step without graphs: its rotary tables change with the length")
        return decode_step_for(model)
    if any(type(m).__name__ == "Linear8bitLt" for m in model.modules()):
        logger.info("decode step without graphs: LLM.int8 finds its outliers on the host")
        return decode_step_for(model)
    try:  # built once: a step fuses the model's weights, a second would copy them again
        return GraphStep(model, max_rows=graph_rows, graphs=True, budget_tokens=budget_tokens), None
    except _Unsupported as exc:
        return None, str(exc)


def _windows(model: Any) -> list[int | None]:
    """Each layer's sliding window as the model's cache keeps it (None: it keeps every column)."""
    from transformers.cache_utils import DynamicCache

    layers: list[Any] = DynamicCache(config=model.config).layers
    return [int(layer.sliding_window) if getattr(layer, "is_sliding", False) else None for layer in layers]


def _width(cache: Any) -> int:
    """The timeline's width: a full layer's column count, or a sliding layer's token count."""
    layer = cache.layers[0]
    return int(layer.cumulative_length) if getattr(layer, "is_sliding", False) else int(layer.keys.shape[2])
