"""The directory of worker hosts: which hosts there are, a client for each, and their state.

Hosts come from `DUKAT_WORKER_HOSTS`; without any, the directory starts a local host process (and
again when that one died: its workers died with it, the next request loads them anew). Host states
are the truth about what is loaded where; the directory only caches them for a moment, refreshing
them once for everyone who asks at the same time.

One directory lives on one event loop (its httpx clients cannot cross loops).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import secrets
import time

import httpx

from gateway.host_client import HostClient
from gateway.placement import Need, no_room_across_hosts, offering, place
from shared.errors import DeviceUnavailableError, DukatError, NoCapacityError
from shared.host_api import HostState, LoadCommand, WorkerState
from shared.processes import HOST_READY, ChildProcess
from shared.settings import Settings

log = logging.getLogger(__name__)
# A host whose state read timed out is busy, not gone: its last state stands this long.
_BUSY_GRACE_S = 60.0
_WARN_EVERY_S = 30.0


class HostDirectory:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.urls: list[str] = list(settings.worker_hosts)
        # The internal token on every host call and worker connection; a local host without a
        # configured one gets one drawn here, so no other local process can drive it.
        self.token = settings.internal_token or (None if settings.worker_hosts else secrets.token_urlsafe(32))
        self._local: ChildProcess | None = None
        self._starting = asyncio.Lock()
        self._clients: dict[str, HostClient] = {}
        self._states: list[HostState] = []
        self._states_at = 0.0
        self._refresh: asyncio.Future[list[HostState]] | None = None
        self._last_good: dict[str, tuple[HostState, float]] = {}  # url -> (state, monotonic time)
        self._trouble: dict[str, str] = {}  # url -> why its last state read failed
        self._warned: dict[str, tuple[str, float]] = {}

    # ---- the local host -----------------------------------------------------------------------

    async def start(self) -> None:
        """Make sure a worker host exists: start a local one when none is configured or it died."""
        if self.urls and (self._local is None or self._local.alive()):
            return
        async with self._starting:
            local = self._local
            if local is not None and not local.alive():
                code = local.proc.returncode if local.proc else None
                log.error("the local worker host exited (code %s); starting a new one", code)
                self._forget_local()
            if not self.urls:
                self._local, url = await asyncio.to_thread(self._spawn_local)
                self.urls = [url]
                log.info("started a local worker host at %s", url)

    def _spawn_local(self) -> tuple[ChildProcess, str]:
        args = ["--host-bind", "127.0.0.1", "--host-port", "0", "--models-dir", str(self.settings.models_dir)]
        env = {"DUKAT_INTERNAL_TOKEN": self.token} if self.token else {}
        if self.settings.otel_endpoint:  # its workers trace where the gateway does
            env["DUKAT_OTEL_ENDPOINT"] = self.settings.otel_endpoint
        child = ChildProcess("worker.host", args, ready_prefix=HOST_READY, env=env)
        url = child.start(timeout=self.settings.host_start_timeout_s)
        atexit.register(child.stop)  # no host (nor its workers) outlives an interpreter that forgot close()
        return child, url

    def _forget_local(self) -> None:
        local, self._local = self._local, None
        if local is not None:
            atexit.unregister(local.stop)
        self.urls = list(self.settings.worker_hosts)
        self._states_at = 0.0

    async def close(self) -> None:
        """Close the clients and stop the local host (and with it every model worker it started)."""
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        local = self._local
        self._forget_local()
        if local is not None:
            await asyncio.to_thread(local.stop)

    # ---- clients and states -------------------------------------------------------------------

    def client(self, url: str) -> HostClient:
        client = self._clients.get(url)
        if client is None:
            s = self.settings
            timeouts = {"load_timeout": s.load_timeout_s + 60, "state_timeout": s.host_state_timeout_s}
            client = self._clients[url] = HostClient(url, token=self.token, **timeouts)
        return client

    async def states(self, *, fresh: bool = False) -> list[HostState]:
        """Every reachable host's state, cached for a second (hosts are the truth, this is a view).

        One refresh at a time: requests arriving while one is in flight wait for it rather than
        each asking every host again.
        """
        await self.start()
        if fresh:  # after a change: a refresh already in flight may predate it
            return await self._refresh_states()
        if time.monotonic() - self._states_at < self.settings.host_state_ttl_s:
            return self._states
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._refresh_states())
        return await asyncio.shield(self._refresh)

    async def _refresh_states(self) -> list[HostState]:
        urls = list(self.urls)
        results = await asyncio.gather(*(self.client(u).state() for u in urls), return_exceptions=True)
        states, now = [], time.monotonic()
        for url, result in zip(urls, results, strict=True):
            if not isinstance(result, BaseException):
                result.url = url
                states.append(result)
                self._last_good[url] = (result, now)
                self._trouble.pop(url, None)
                continue
            self._trouble[url] = str(result) or type(result).__name__
            last = self._last_good.get(url)
            busy = isinstance(result.__cause__, httpx.TimeoutException)
            if busy and last is not None and now - last[1] < _BUSY_GRACE_S:
                states.append(last[0])  # slow, not gone: its last word stands for a while
            self._warn(url, self._trouble[url])
        self._states, self._states_at = states, now
        return states

    def _warn(self, url: str, reason: str) -> None:
        """One line per host and reason every _WARN_EVERY_S, not one per request."""
        now = time.monotonic()
        said = self._warned.get(url)
        if said is None or said[0] != reason or now - said[1] >= _WARN_EVERY_S:
            self._warned[url] = (reason, now)
            log.warning("%s", reason)

    def no_host_answered(self) -> NoCapacityError:
        """Why no host could be asked: each host's last trouble (busy, starting, down)."""
        reasons = "; ".join(self._trouble.get(u, f"{u}: no answer") for u in self.urls)
        if not self.urls:
            reasons = "none is configured (DUKAT_WORKER_HOSTS) and no local one runs"
        return NoCapacityError(f"no worker host answered: {reasons}; retry shortly")

    def invalidate(self) -> None:
        """Something changed (a load, an unload, a worker that failed): the next read asks the hosts."""
        self._states_at = 0.0

    # ---- finding and placing models -----------------------------------------------------------

    async def find(self, model_id: str, *, fresh: bool = False) -> tuple[HostState, WorkerState] | None:
        """The host and worker of `model_id`, if some host has one (in any status)."""
        found = await self.find_all(model_id, fresh=fresh)
        return found[0] if found else None

    async def find_all(self, model_id: str, *, fresh: bool = False) -> list[tuple[HostState, WorkerState]]:
        """Every replica of `model_id` (in any status), host by host."""
        return [(h, w) for h in await self.states(fresh=fresh) for w in h.models if w.model_id == model_id]

    async def pick(
        self, model_id: str, device: str, need: Need | None = None, avoid: frozenset[str] = frozenset()
    ) -> HostState:
        """The host a new worker (or download) of `model_id` goes to: one with room for `need`
        bytes, else one where idle models can be evicted; `avoid`: hosts holding a replica."""
        hosts = await self.states(fresh=True)
        if not hosts:
            raise self.no_host_answered()
        if not offering(hosts, device):
            offered = ", ".join(sorted({d.name for h in hosts for d in h.devices})) or "none"
            raise DeviceUnavailableError(
                f'no worker host offers device {device!r} (offered: {offered}; or use "auto")', param="device"
            )
        host = place(model_id, hosts, device=device, need=need, avoid=avoid)
        if host is None:
            raise NoCapacityError(no_room_across_hosts(model_id, hosts, need or {}, device))
        return host

    async def need(self, cmd: LoadCommand) -> Need:
        """Bytes a load would take, by device kind, as a host estimates it from the files (empty when
        no host has them yet: the host that downloads them checks again)."""
        for host in await self.states():
            with contextlib.suppress(DukatError):
                estimate = await self.client(host.url).estimate(cmd)
                if estimate.bytes_by_kind:
                    return estimate.bytes_by_kind
        return {}

    # ---- download job ids: "<host index>.<host's job id>" when there are several hosts ----------

    def job_id(self, url: str, host_job_id: str) -> str:
        return f"{self.urls.index(url)}.{host_job_id}" if len(self.urls) > 1 else host_job_id

    def job_host(self, job_id: str) -> tuple[str, str]:
        """The host URL and the host's own id of a job id made by `job_id`."""
        index, _, raw = job_id.rpartition(".")
        url = self.urls[int(index)] if index.isdigit() and int(index) < len(self.urls) else None
        url = url or (self.urls[0] if self.urls else None)
        if url is None:
            raise self.no_host_answered()
        return url, raw
