"""Serving a model that has several replicas (workers on different hosts or devices).

A request goes to the replica with the fewest requests in flight (this gateway's count first, then
the hosts' count of all gateways, then the address, so ties break the same way everywhere). A
request whose replica fails before anything was sent to the client (unreachable, connection lost,
draining for an unload) is retried once on the next replica.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from shared.errors import DukatError, ModelNotLoadedError, WorkerFailedError
from shared.host_api import WorkerState
from shared.wire_client import WorkerConnection

log = logging.getLogger(__name__)
# Failures before the first byte that another replica may not have: the worker is gone or going.
RETRYABLE = (WorkerFailedError, ModelNotLoadedError)
Connect = Callable[[WorkerState], WorkerConnection]


def by_load(workers: list[WorkerState], connect: Connect) -> list[WorkerState]:
    """The loaded replicas, least busy first."""
    loaded = [w for w in workers if w.status == "loaded" and w.address]
    if len(loaded) < 2:
        return loaded
    return sorted(loaded, key=lambda w: (connect(w).in_flight, w.in_flight, w.address or ""))


def retrying(worker: WorkerState, exc: DukatError, request_id: str) -> None:
    log.warning(
        "replica of %s at %s failed before its first byte (%s); retrying on another rid=%s",
        worker.model_id, worker.address, exc, request_id,
    )  # fmt: skip
