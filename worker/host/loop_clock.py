"""How late the worker host's own event loop runs: a tick every 50 ms that notes how much later than
asked it woke up.

A host that was late (its loop blocked, its machine swapping or starved of CPU) cannot tell a hung
worker from its own lateness: a pong may sit unread in a socket while the loop is stuck. The
watchdog (worker.host.healing) asks `late_since` before it judges a worker hung, and pings again
instead when the host itself was late.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

log = logging.getLogger(__name__)
TICK_S = 0.05
# Lateness below this is ordinary scheduling noise on a busy machine, not a blocked loop.
LATE_S = 0.25
_WARN_EVERY_S = 60.0
_KEEP_S = 600.0


class LoopClock:
    """Owns the host loop's lateness record: (monotonic time, seconds late) of each late tick."""

    def __init__(self, tick_s: float = TICK_S) -> None:
        self.tick_s = tick_s
        self.late: collections.deque[tuple[float, float]] = collections.deque()
        self.worst_s = 0.0  # since the host started
        self._warned_at = -_WARN_EVERY_S
        self._ticked_at = time.monotonic()

    async def run(self) -> None:
        while True:
            self._ticked_at = time.monotonic()
            await asyncio.sleep(self.tick_s)
            now = time.monotonic()
            self.note(now, now - self._ticked_at - self.tick_s)

    def note(self, now: float, lateness: float) -> None:
        self.worst_s = max(self.worst_s, lateness)
        if lateness < LATE_S:
            return
        self.late.append((now, lateness))
        while self.late and now - self.late[0][0] > _KEEP_S:
            self.late.popleft()
        if now - self._warned_at >= _WARN_EVERY_S:  # one line a minute, however often it happens
            self._warned_at = now
            log.warning(
                "the worker host's event loop ran %.2f s late (blocked, or the machine is overloaded); "
                "workers are not judged hung meanwhile",
                lateness,
            )

    def late_since(self, since: float) -> float:
        """The most the loop was late at any tick from monotonic time `since` until now, counting a
        tick that is overdue right now (after a block, the loop may run this before the tick)."""
        noted = max((lag for at, lag in self.late if at >= since), default=0.0)
        return max(noted, time.monotonic() - self._ticked_at - self.tick_s)
