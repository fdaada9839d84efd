"""Keeps a loaded model worker alive: liveness pings, and restarts with a backoff.

A worker that stops answering pings (hung: stopped, deadlocked) is SIGKILLed and replaced; one that
dies after it loaded (an OOM kill, a crash) is replaced too, after a backoff that doubles, a few
times per window; past that it is `failed` with its last log lines.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from shared.errors import DukatError, ModelLoadFailedError
from shared.host_api import WorkerState
from shared.processes import kill_group
from shared.settings import Settings
from shared.wire import WorkerLoad
from shared.wire_client import WorkerConnection
from worker.host.loop_clock import LATE_S, LoopClock

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Healing:
    """How the host keeps a loaded worker alive (DUKAT_WORKER_RESTART*, DUKAT_WORKER_PING_*)."""

    restarts: int
    window_s: float
    backoff_s: float
    ping_interval_s: float
    ping_timeout_s: float

    @classmethod
    def of(cls, settings: Settings) -> Healing:
        return cls(
            restarts=settings.worker_restarts,
            window_s=settings.worker_restart_window_s,
            backoff_s=settings.worker_restart_backoff_s,
            ping_interval_s=settings.worker_ping_interval_s,
            ping_timeout_s=settings.worker_ping_timeout_s,
        )


class Lifeline:
    """One model worker's processes, one after another, each replacing one that died or hung."""

    def __init__(
        self, healing: Healing, state: WorkerState, logs: collections.deque[str], clock: LoopClock
    ) -> None:
        self.healing = healing
        self.clock = clock  # the host's own lateness: no worker is judged on a late host's word
        self.state = state  # the worker's, shared with its supervisor
        self.logs = logs
        self.restarted_at: collections.deque[float] = collections.deque()  # monotonic
        self.hung: str | None = None  # why the watchdog killed the current process

    async def run(
        self,
        attempt: Callable[[], Awaitable[int | None]],
        *,
        restarting: Callable[[], None],
        fail: Callable[[DukatError], None],
    ) -> None:
        """Run `attempt` (one process, spawn to exit: its exit code when it had loaded, None when it
        never did) again while its processes load and the window's restarts last."""
        while True:
            self.hung = None
            if (code := await attempt()) is None:
                return
            reason = self.hung or f"exited with code {code}"
            delay = self._restart_delay()
            name, tail = self.state.model_id, "\n".join(self.logs)
            if delay is None:
                h = self.healing
                message = (
                    f"model worker for {name!r} {reason}; not restarted again "
                    f"({h.restarts} restarts within {h.window_s:.0f} s)"
                )
                fail(ModelLoadFailedError(message))
                log.error("%s; last log lines:\n%s", message, tail)
                return
            s = self.state
            s.restarts += 1
            s.status, s.address, s.pid, s.last_restart_reason = "loading", None, None, reason
            restarting()
            log.warning(
                "model worker for %r %s; restart %d in %.1f s; last log lines:\n%s",
                name, reason, s.restarts, delay, tail,
            )
            self.logs.append(f"--- restart {s.restarts}: the worker {reason} ---")
            await asyncio.sleep(delay)

    def _restart_delay(self) -> float | None:
        """The backoff before the next restart, or None when the window's restarts are spent."""
        h, now = self.healing, time.monotonic()
        times = self.restarted_at
        while times and now - times[0] > h.window_s:
            times.popleft()
        if len(times) >= h.restarts:
            return None
        times.append(now)
        return h.backoff_s * 2 ** (len(times) - 1)

    async def watch(
        self,
        process: asyncio.subprocess.Process,
        conn: WorkerConnection,
        observe: Callable[[WorkerLoad], None],
    ) -> None:
        """Ping the worker on a period; one that misses its deadline is hung: SIGKILL (a stopped or
        deadlocked process ignores SIGTERM), and `run` replaces it."""
        h = self.healing
        while True:
            await asyncio.sleep(h.ping_interval_s)
            asked = time.monotonic()
            try:
                pong = await asyncio.wait_for(conn.pong(), h.ping_timeout_s)
            except (TimeoutError, DukatError) as exc:
                with contextlib.suppress(TimeoutError):  # a crash closes the wire first: let it say so
                    await asyncio.wait_for(asyncio.shield(process.wait()), 1.0)
                if process.returncode is not None:
                    return
                if isinstance(exc, TimeoutError) and (late := self.clock.late_since(asked)) >= LATE_S:
                    # The pong may have sat unread while this loop was stuck: ask again, judge nothing.
                    log.info(
                        "no pong from the worker for %r within %g s, but this host ran %.1f s late "
                        "meanwhile; not judged hung, pinging again",
                        self.state.model_id, h.ping_timeout_s, late,
                    )  # fmt: skip
                    continue
                why = "timed out" if isinstance(exc, TimeoutError) else exc
                self.hung = f"did not answer a ping within {h.ping_timeout_s:g} s ({why})"
                log.error("model worker for %r %s; killing it", self.state.model_id, self.hung)
                kill_group(process.pid)
                return
            observe(pong.load)
