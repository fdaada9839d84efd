"""LoRA adapters applied per row of a batch: rows for different adapters and for the base model
share every forward pass and decode step.

Each adapted linear layer adds `x @ A^T @ B^T * scale` to its output, with each row's own A and B.
A step's rows are given by the scheduler (`Adapters.rows`, per thread); once per change of the
batch's rows each adapted layer puts the distinct adapters' matrices side by side, and adds
`((x @ [A_1 .. A_n]) * rows' columns) @ [B_1; ..; B_n]`: two plain matmuls whatever the number of
adapters, each row keeping only its own adapter's columns (a base row none: its output is the base
model's, exactly), each adapter's matrices held once rather than once per row. Where the model's
forward runs (prefills, unbatched models), the adapted modules' forward adds it (wrapped when the
first adapter of that module loads); the own decode step (worker/model/decode_step.py) bypasses the
modules and asks `Adapters.add` itself.

Why not PEFT's mixed-adapter batches (`adapter_names=`): PEFT wraps the modules, which the own
decode step fuses by their weights, and it groups rows per adapter in Python in every layer.
`tests/worker/model/test_lora.py` checks each row against PEFT's merged model.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from shared.adapters import WEIGHTS_NAME, adapter_folder, read_config
from shared.errors import InvalidRequestError, NotFoundError

logger = logging.getLogger(__name__)

_PREFIX = "base_model.model."


@dataclass(eq=False, kw_only=True)
class Adapter:
    """One adapter's matrices per adapted module: A^T [in, r] and B^T * scale [r, out]."""

    id: str
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def read_adapter(adapter_id: str, folder: Path, model: nn.Module) -> Adapter:
    """The adapter in `folder`, checked against `model`'s modules and shapes (a 400 when it does not fit)."""
    from safetensors.torch import load_file

    config = read_config(folder)
    if (why := config.refusal()) is not None:
        raise InvalidRequestError(f"adapter {adapter_id!r} cannot be served: {why}", param="model")
    weights_file = folder / WEIGHTS_NAME
    if not weights_file.is_file():
        raise InvalidRequestError(f"adapter {adapter_id!r} has no {WEIGHTS_NAME}", param="model")
    tensors = load_file(str(weights_file))
    modules = dict(model.named_modules())
    param = next(model.parameters())
    dtype = param.dtype if param.dtype.is_floating_point else torch.float32
    adapter = Adapter(id=adapter_id)
    for key, a in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        name = key.removeprefix(_PREFIX).removesuffix(".lora_A.weight")
        b = tensors.get(key.replace(".lora_A.", ".lora_B."))
        module = modules.get(name)
        if b is None or module is None or not hasattr(module, "out_features"):
            raise InvalidRequestError(
                f"adapter {adapter_id!r} does not fit this model: no linear layer {name!r}", param="model"
            )
        if a.shape[1] != module.in_features or b.shape[0] != module.out_features:
            raise InvalidRequestError(
                f"adapter {adapter_id!r} does not fit this model: {name} is "
                f"{module.in_features}->{module.out_features}, the adapter {a.shape[1]}->{b.shape[0]}",
                param="model",
            )
        a_t = a.t().to(device=param.device, dtype=dtype).contiguous()
        b_t = (b.t().float() * config.scale()).to(device=param.device, dtype=dtype).contiguous()
        adapter.layers[name] = (a_t, b_t)
    if not adapter.layers:
        raise InvalidRequestError(f"adapter {adapter_id!r} has no LoRA matrices", param="model")
    return adapter


Rows = tuple[Adapter | None, ...]
Group = tuple[tuple[str, int], ...]  # linear layers that read one input: (module name, output width)


class Adapters:
    """The adapters a model worker keeps loaded (at most `max_loaded`, least recently used first
    out; a row running one keeps it alive until it ends), the adapted modules' wrapped forwards, and
    each thread's current rows.

    Thread-safe: `get` from request threads, `rows` and the forward passes on the scheduler's.
    """

    def __init__(self, model: nn.Module, models_dir: Path, max_loaded: int) -> None:
        self._model = model
        self._models_dir = Path(models_dir)
        self.max_loaded = max_loaded
        self._loaded: OrderedDict[str, Adapter] = OrderedDict()
        self._lock = threading.Lock()
        self._current = threading.local()  # .rows: Rows | None
        head = getattr(model, "get_output_embeddings", lambda: None)()
        self._adaptable = {n for n, m in model.named_modules() if _adaptable(m) and m is not head}
        self._wrapped: set[str] = set()  # the modules whose forward adds the rows' deltas
        # module name -> (the rows it was gathered for, `_stack`'s A^T, B^T and row mask)
        self._gathered: dict[Group, tuple[Rows, torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    def get(self, adapter_id: str) -> Adapter:
        """The adapter, read from models_dir first if it is not loaded (evicting the least recently used)."""
        try:
            folder = adapter_folder(adapter_id, self._models_dir)  # a deleted one is gone, loaded or not
        except NotFoundError:
            self.drop(adapter_id)
            raise
        with self._lock:
            adapter = self._loaded.get(adapter_id)
            if adapter is not None:
                self._loaded.move_to_end(adapter_id)
                return adapter
            if self.max_loaded <= 0:
                raise InvalidRequestError(
                    "this model worker serves no LoRA adapters (DUKAT_MAX_LORAS is 0)", param="model"
                )
            adapter = read_adapter(adapter_id, folder, self._model)
            if odd := sorted(adapter.layers.keys() - self._adaptable):
                raise InvalidRequestError(
                    f"adapter {adapter_id!r} adapts {odd[0]}, which is not a linear layer Dukat adapts",
                    param="model",
                )
            for name in sorted(adapter.layers.keys() - self._wrapped):
                self._wrap(name)
            self._loaded[adapter_id] = adapter
            while len(self._loaded) > self.max_loaded:
                gone, _ = self._loaded.popitem(last=False)
                logger.info("LoRA adapter %s unloaded (least recently used)", gone)
            logger.info("LoRA adapter %s loaded (%d modules)", adapter_id, len(adapter.layers))
            return adapter

    def drop(self, adapter_id: str) -> bool:
        """Unload an adapter (rows running it finish with it); whether it was loaded."""
        with self._lock:
            return self._loaded.pop(adapter_id, None) is not None

    @contextlib.contextmanager
    def rows(self, adapters: Sequence[Adapter | None]) -> Iterator[None]:
        """The forward passes inside run each row `i` (dim 0 of the inputs) with `adapters[i]`."""
        current = self._current
        before = getattr(current, "rows", None)
        current.rows = tuple(adapters) if any(a is not None for a in adapters) else None
        try:
            yield
        finally:
            current.rows = before

    def active(self) -> bool:
        """Whether this thread's forward passes run some row with an adapter."""
        return getattr(self._current, "rows", None) is not None

    @contextlib.contextmanager
    def wrappers_off(self) -> Iterator[Rows | None]:
        """For the own decode step, which adds the deltas itself (`add`)."""
        current = self._current
        before = getattr(current, "rows", None)
        current.rows = None
        try:
            yield before
        finally:
            current.rows = before

    def add(
        self, rows: Rows | None, out: torch.Tensor, modules: Group, x: torch.Tensor
    ) -> None:
        """Into `out` [rows, sum of widths], in place: each (module, width)'s delta on its columns
        (modules that read the same `x`, as one matmul does: their deltas are one sum too)."""
        if rows is not None and (low := self._low_rank(rows, modules, x)) is not None:
            out.addmm_(*low)  # x [rows, in] here (a decode step): one call adds the deltas

    def _wrap(self, name: str) -> None:
        """The module's forward adds its rows' deltas from now on. An instance attribute, set in one
        step, rather than a forward hook: registering a hook from a request's thread would change a
        module's hook dict while the scheduler's forward iterates it, and any hook at all moves every
        call of the module onto torch's slow path (a forward-decoding Llama's 8 streams 627 -> 371
        tok/s with hooks on all its linears, none of them adapting)."""
        module = self._model.get_submodule(name)
        original = module.forward
        group = ((name, cast(int, module.out_features)),)

        def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            out = original(x, *args, **kwargs)
            rows = getattr(self._current, "rows", None)
            if rows is None:
                return out
            low = self._low_rank(rows, group, x)
            return out if low is None else out + (low[0] @ low[1]).to(out.dtype).view_as(out)

        module.forward = forward
        self._wrapped.add(name)

    def _low_rank(
        self, rows: Rows, group: Group, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """x [rows, ..., in] -> (each row's x @ A^T on its own adapter's columns [rows, ..., R], B^T
        [R, the group's widths]): their product is the rows' deltas (None: no row adapts the group)."""
        got = self._gathered.get(group)
        if got is None or got[0] != rows:
            stacked = _stack(rows, group)
            if stacked is None:
                self._gathered.pop(group, None)
                return None
            got = self._gathered[group] = (rows, *stacked)
        _, a_t, b_t, mask = got
        if x.shape[0] != len(rows):
            raise RuntimeError(f"LoRA rows: {len(rows)} adapters for a batch of {x.shape[0]}")
        if x.dtype != a_t.dtype:
            x = x.to(a_t.dtype)
        if x.dim() == 2:
            return (x @ a_t) * mask, b_t
        return (x @ a_t) * mask.view(len(rows), *[1] * (x.dim() - 2), -1), b_t


def _adaptable(module: nn.Module) -> bool:
    """A linear layer (float, bitsandbytes or the CPU block kernels') of the decoder, not the LM head
    (PEFT's defaults never adapt it)."""
    linear = isinstance(module, nn.Linear) or type(module).__name__ == "BlockLinear"
    return linear and hasattr(module, "in_features") and hasattr(module, "out_features")


def _stack(rows: Rows, group: Group) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The group's modules' matrices of the rows' distinct adapters side by side: A^T [in, R] (R: their
    ranks summed) and B^T [R, the group's widths] (each block on its module's columns, zeros
    elsewhere), and which of the R columns each row keeps [rows, R] (none for a row without an
    adapter: its delta is exactly 0). Each adapter's matrices are held once, not once per row."""
    distinct = list({id(a): a for a in rows if a is not None}.values())
    blocks = []  # (adapter, A^T, B^T, the module's first column)
    start = 0
    for name, width in group:
        blocks += [(a, *a.layers[name], start) for a in distinct if name in a.layers]
        start += width
    if not blocks:
        return None
    a_t = torch.cat([a for _, a, _, _ in blocks], dim=1)
    b_t = a_t.new_zeros(a_t.shape[1], start)
    mask = a_t.new_zeros(len(rows), a_t.shape[1])
    r0 = 0
    for adapter, a, b, column in blocks:
        rank = a.shape[1]
        b_t[r0 : r0 + rank, column : column + b.shape[1]] = b
        for i, row in enumerate(rows):
            if row is adapter:
                mask[i, r0 : r0 + rank] = 1
        r0 += rank
    return a_t, b_t, mask
