"""Which worker host gets a model: the first host in rendezvous order (hashing the model id with
each host's URL) that has room for the model's estimated memory; when none has, the first where
evicting idle models would make room (the host evicts them).

A pure function of the hosts' reported state: every gateway replica computes the same answer, so
two replicas asked to load one model pick the same host, and the host makes the load idempotent.
"""

from __future__ import annotations

import hashlib

from shared.capacity import eviction_plan, loaded_count
from shared.host_api import DeviceState, HostState, device_kind

Need = dict[str, int]  # bytes by device kind ("cpu", "cuda"); empty: unknown (the host checks)


def _score(model_id: str, host_url: str) -> int:
    digest = hashlib.blake2b(f"{model_id}\x00{host_url}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def offering(hosts: list[HostState], device: str = "auto") -> list[HostState]:
    """Hosts that offer `device` ("auto": any), in no particular order."""
    return [h for h in hosts if h.devices and (device == "auto" or any(d.name == device for d in h.devices))]


def ranked(model_id: str, hosts: list[HostState], device: str = "auto") -> list[HostState]:
    """Hosts offering `device`, in `model_id`'s rendezvous order (keyed by URL: stable across host
    restarts, unlike host ids)."""
    return sorted(offering(hosts, device), key=lambda h: _score(model_id, h.url), reverse=True)


def _devices(host: HostState, device: str) -> list[DeviceState]:
    return [d for d in host.devices if device in ("auto", d.name)]


def fits(host: HostState, need: Need, device: str = "auto", *, evicting: bool = False) -> bool:
    """Whether a device of `host` has room for `need` now (or once idle models are evicted)."""
    for d in _devices(host, device):
        plan = eviction_plan(host, d, need.get(device_kind(d.name), 0))
        if plan == [] or (evicting and plan):
            return True
    return False


def place(
    model_id: str,
    hosts: list[HostState],
    *,
    device: str = "auto",
    need: Need | None = None,
    avoid: frozenset[str] = frozenset(),
) -> HostState | None:
    """The host for `model_id`, or None when no host offers `device` or none has room even after
    evicting idle models. `avoid`: URLs of hosts that already hold a replica."""
    order = [h for h in ranked(model_id, hosts, device) if h.url not in avoid]
    need = need or {}
    for evicting in (False, True):
        for host in order:
            if fits(host, need, device, evicting=evicting):
                return host
    return None


def no_room_across_hosts(model_id: str, hosts: list[HostState], need: Need, device: str = "auto") -> str:
    """Needed vs free bytes on every place that offers `device`: the 503's message."""
    places = []
    for h in offering(hosts, device):
        count = loaded_count(h)
        slots = f", {count} of at most {h.max_loaded_models} models loaded" if h.max_loaded_models else ""
        places += [
            f"{h.url} {d.name}: {d.free_memory} bytes free of {d.total_memory}{slots}"
            for d in _devices(h, device)
        ]
    needed = ", ".join(f"{need[k]} bytes on {k}" for k in sorted(need)) or "an unknown amount"
    return (
        f"no room for model {model_id!r}: it needs {needed} (estimated from its files); "
        f"free: {'; '.join(places) or 'no host'}; and no idle model can be evicted to make room"
    )
