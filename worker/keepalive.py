"""The host's keep-alive: every DUKAT_USAGE_POLL_S it asks each loaded worker how busy it is (a
ping over the wire; the Pong carries its counters) and unloads the ones idle past their keep-alive.

The host owns its workers, so this holds with any number of gateways: none of them keeps a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from shared.capacity import expired
from shared.errors import DukatError
from shared.keep_alive import describe
from shared.wire_client import WorkerConnection
from worker.supervisor import Supervisor

log = logging.getLogger(__name__)


class KeepAlive:
    def __init__(
        self,
        supervisor: Supervisor,
        unload: Callable[[str, str], Awaitable[None]],
        *,
        period_s: float,
        token: str | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.unload = unload  # (model id, reason): the host's unload, which logs the line
        self.period_s = period_s
        self.token = token  # the internal token the workers ask of every connection
        self._conns: dict[str, WorkerConnection] = {}

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.period_s)
                try:
                    await self.tick()
                except Exception:  # one bad round must not end keep-alive for good
                    log.exception("keep-alive round failed")
        finally:
            await asyncio.gather(*(c.close() for c in self._conns.values()), return_exceptions=True)

    async def tick(self) -> None:
        workers = [w for w in self.supervisor.states() if w.status == "loaded" and w.address]
        await asyncio.gather(*(self._observe(w.model_id, w.address or "") for w in workers))
        for conn_address in set(self._conns) - {w.address for w in workers}:
            await self._conns.pop(conn_address).close()
        for w in expired(self.supervisor.states()):
            reason = f"keep-alive {describe(w.keep_alive_s)} ran out (idle {w.idle_s:.1f}s)"
            with contextlib.suppress(DukatError):
                await self.unload(w.model_id, reason)

    async def _observe(self, model_id: str, address: str) -> None:
        conn = self._conns.get(address)
        if conn is None:
            conn = self._conns[address] = WorkerConnection(address, self.token)
        try:
            pong = await asyncio.wait_for(conn.pong(), self.period_s * 5)
        except (DukatError, TimeoutError):
            return  # a dead or hung worker is the supervisor's to handle, not keep-alive's
        self.supervisor.observe(model_id, pong.load)
