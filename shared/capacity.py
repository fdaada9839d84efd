"""Room for models, as pure functions of a host's reported state: what a device has free, which
idle models could be evicted (least recently used first), what keep-alive has run out.

The host acts on these (it owns its workers); gateways read the same state and compute the same
answers, so every replica agrees on where a model fits.
"""

from __future__ import annotations

from shared.host_api import LIVE_STATUSES, RUNNING_STATUSES, DeviceState, HostState, WorkerState


def pinned(worker: WorkerState) -> bool:
    return worker.keep_alive_s is not None and worker.keep_alive_s < 0


def idle(worker: WorkerState) -> bool:
    """Loaded, with nothing in flight."""
    return worker.status == "loaded" and worker.in_flight == 0


def evictable(workers: list[WorkerState], device: str | None = None) -> list[WorkerState]:
    """Idle, unpinned workers, least recently used first."""
    candidates = [w for w in workers if idle(w) and not pinned(w) and device in (None, w.device)]
    return sorted(candidates, key=lambda w: (w.last_used_at, w.model_id))


def expired(workers: list[WorkerState]) -> list[WorkerState]:
    """Workers idle for longer than their keep-alive."""
    return [
        w
        for w in workers
        if idle(w) and w.keep_alive_s is not None and w.keep_alive_s >= 0 and w.idle_s >= w.keep_alive_s
    ]


def loaded_count(host: HostState) -> int:
    return sum(1 for w in host.models if w.status in LIVE_STATUSES)


def room_after_eviction(host: HostState, device: DeviceState) -> int:
    """`device`'s free bytes once every evictable model on it is gone."""
    return device.free_memory + sum(w.estimated_bytes for w in evictable(host.models, device.name))


def eviction_plan(host: HostState, device: DeviceState, need: int) -> list[WorkerState] | None:
    """The fewest least-recently-used idle models on `device` to unload so `need` bytes fit (and a
    slot under max_loaded_models is free); None when even all of them would not do."""
    victims: list[WorkerState] = []
    free, count = device.free_memory, loaded_count(host)
    limit = host.max_loaded_models
    candidates = iter(evictable(host.models, device.name))
    others = iter(w for w in evictable(host.models) if w.device != device.name)
    while free < need or (limit and count >= limit):
        victim = next(candidates, None)
        if victim is None and free >= need:  # only a slot is missing: any device's idle model will do
            victim = next(others, None)
        if victim is None:
            return None
        victims.append(victim)
        count -= 1
        if victim.device == device.name:
            free += victim.estimated_bytes
    return victims


def holds_memory(worker: WorkerState) -> bool:
    return worker.status in RUNNING_STATUSES
