"""The host's keep-alive: unloads the loaded workers idle past their keep-alive.

Their counters (in flight, idle seconds, the last request's keep_alive) come with the pongs of the
supervisor's liveness pings (every DUKAT_WORKER_PING_INTERVAL_S); this only reads them, on the same
period. The host owns its workers, so this holds with any number of gateways: none keeps a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from shared.capacity import expired
from shared.errors import DukatError
from shared.keep_alive import describe
from worker.host.supervisor import Supervisor

log = logging.getLogger(__name__)


class KeepAlive:
    def __init__(
        self, supervisor: Supervisor, unload: Callable[..., Awaitable[None]], *, period_s: float
    ) -> None:
        self.supervisor = supervisor
        self.unload = unload  # (model id, reason, replica=): the host's unload, which logs the line
        self.period_s = period_s

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            try:
                await self.tick()
            except Exception:  # one bad round must not end keep-alive for good
                log.exception("keep-alive round failed")

    async def tick(self) -> None:
        for w in expired(self.supervisor.states()):
            reason = f"keep-alive {describe(w.keep_alive_s)} ran out (idle {w.idle_s:.1f}s)"
            with contextlib.suppress(DukatError):
                await self.unload(w.model_id, reason, replica=w.replica)
