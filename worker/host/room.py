"""A worker host's room for models: what each device offers once loads in progress and the
DUKAT_HOST_MEMORY_BYTES cap are taken off, which device a load goes to, and which idle models are
evicted (least recently used first, never pinned, never busy) when nothing has room.
"""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec

from shared.capacity import eviction_plan, holds_memory, loaded_count
from shared.errors import DeviceUnavailableError, NoCapacityError
from shared.host_api import (
    DEVICE_KINDS,
    LIVE_STATUSES,
    DeviceState,
    HostState,
    LoadEstimate,
    WorkerState,
    device_kind,
)
from shared.settings import Quantization, Settings
from worker.host.memory_estimate import TensorSizes, estimate_memory

log = logging.getLogger(__name__)


def estimate(path: Path, quantization: Quantization, settings: Settings, sizes: TensorSizes) -> LoadEstimate:
    """Blocking (file reads, cached in `sizes`): call it from a thread."""
    tokens = settings.kv_cache_tokens + settings.prefix_cache_tokens
    graphs = settings.cuda_graph_kv_tokens if settings.cuda_graphs and settings.own_decode_step else 0
    by_kind: dict[str, int] = {  # the CUDA graphs' static buffers come on top of the model's cache
        k: estimate_memory(path, quantization, k, kv_tokens=tokens + (graphs if k == "cuda" else 0),
                           sizes=sizes).total_bytes
        for k in DEVICE_KINDS
    }
    return LoadEstimate(quantization=quantization, bytes_by_kind=by_kind)


def offered(devices: list[DeviceState], workers: list[WorkerState], budget: int) -> list[DeviceState]:
    """`devices` as the host offers them: loads in progress have not taken their memory yet, so
    their estimates come off what the device reports; a budget caps total and free."""
    out = []
    for d in devices:
        mine = [w for w in workers if w.device == d.name and holds_memory(w)]
        loading = sum(w.estimated_bytes for w in mine if w.status == "loading")
        total, free = d.total_memory, d.free_memory - loading
        if budget:
            total = min(total, budget)
            free = min(free, budget - sum(w.estimated_bytes for w in mine))
        out.append(DeviceState(name=d.name, total_memory=total, free_memory=max(free, 0), models=d.models))
    return out


def check_device(devices: list[DeviceState], requested: str) -> list[DeviceState]:
    """The devices `requested` names ("auto": all); DeviceUnavailableError when this host has none."""
    matching = [d for d in devices if requested in ("auto", d.name)]
    if not matching:
        offered_names = ", ".join(d.name for d in devices) or "none"
        raise DeviceUnavailableError(
            f"device {requested!r} is not available on this host (offered: {offered_names})", param="device"
        )
    return matching


def full_devices(workers: list[WorkerState], model_id: str, per_device: int) -> frozenset[str]:
    """Devices that run as many workers of `model_id` as DUKAT_REPLICAS_PER_DEVICE allows."""
    counts: dict[str, int] = {}
    for w in workers:
        if w.model_id == model_id and w.status in LIVE_STATUSES:
            counts[w.device] = counts.get(w.device, 0) + 1
    return frozenset(d for d, n in counts.items() if n >= per_device)


def choose(
    host: HostState, model_id: str, requested: str, need: dict[str, int], full: frozenset[str] = frozenset()
) -> tuple[str, list[WorkerState]]:
    """The device for a load and the models to evict first (often none); never a device in `full`
    (it runs its share of the model's replicas), and never the model's own workers as victims.

    Raises DeviceUnavailableError for a device this host does not offer, NoCapacityError (needed vs
    free bytes) when no device has room even after evicting every idle model.
    """
    offered_here = check_device(host.devices, requested)
    devices = [d for d in offered_here if d.name not in full]
    if not devices:
        raise NoCapacityError(
            f"every device of host {host.url} ({', '.join(sorted(full))}) already runs its share of "
            f"{model_id!r}'s workers (DUKAT_REPLICAS_PER_DEVICE)"
        )
    host = msgspec.structs.replace(host, models=[w for w in host.models if w.model_id != model_id])
    # Most free memory first; the name breaks ties, so the answer only depends on the state.
    ranked = sorted(devices, key=lambda d: (-d.free_memory, d.name))
    for device in ranked:
        plan = eviction_plan(host, device, need.get(device_kind(device.name), 0))
        if plan == []:
            return device.name, []
    for device in ranked:
        plan = eviction_plan(host, device, need.get(device_kind(device.name), 0))
        if plan:
            return device.name, plan
    raise NoCapacityError(no_room_on_host(model_id, host, devices, need))


def no_room_on_host(model_id: str, host: HostState, devices: list[DeviceState], need: dict[str, int]) -> str:
    parts = [
        f"{d.name}: needs {need.get(device_kind(d.name), 0)} bytes, {d.free_memory} free of {d.total_memory}"
        for d in devices
    ]
    limit = host.max_loaded_models
    slots = f"; {loaded_count(host)} of at most {limit} models loaded" if limit else ""
    return (
        f"no room for model {model_id!r} on host {host.url} ({'; '.join(parts)}{slots}), "
        "and no idle model can be evicted (pinned ones and busy ones stay): unload a model first"
    )
