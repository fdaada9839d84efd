"""Which worker host gets a model: rendezvous hashing of the model id over healthy hosts with room.

Every gateway replica computes the same answer from the same host states, so two replicas asked to
load one model pick the same host, and the host makes the load idempotent.
"""

from __future__ import annotations

import hashlib

from shared.host_api import HostState


def _score(model_id: str, host_id: str) -> int:
    digest = hashlib.blake2b(f"{model_id}\x00{host_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def place(model_id: str, hosts: list[HostState], *, device: str = "auto") -> HostState | None:
    """The host for `model_id`, or None when no host offers `device`.

    Hosts are keyed by URL (stable across host restarts, unlike host_id).
    """
    candidates = [
        h for h in hosts if h.devices and (device == "auto" or any(d.name == device for d in h.devices))
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda h: _score(model_id, h.url))
