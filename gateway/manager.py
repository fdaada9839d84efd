"""ModelManager: the seed's API, and the one orchestrator of download / load / unload / generate.

The gateway's routes call its async methods (`a*`); Python users call the seed's synchronous methods,
which run the same coroutines on a private event loop. Nothing here is the truth about anything:
what is loaded where comes from the worker hosts, models and defaults from the config file.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from gateway import replicas
from gateway.host_client import HostClient
from gateway.metrics import GatewayMetrics
from gateway.placement import Need, no_room_message, offering, place
from shared.errors import (
    ConflictError,
    DeviceUnavailableError,
    DukatError,
    InvalidRequestError,
    ModelLoadFailedError,
    ModelNotFoundError,
    ModelNotLoadedError,
    NoCapacityError,
    NotFoundError,
    WorkerFailedError,
)
from shared.generation import (
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    GenerateResult,
    Message,
    SamplingParams,
    params_from_mapping,
)
from shared.host_api import (
    DownloadCommand,
    DownloadJob,
    EstimateCommand,
    HostState,
    LoadCommand,
    LocalModelInfo,
    WorkerState,
)
from shared.keep_alive import parse_keep_alive
from shared.model_config import ConfigStore, ModelEntry
from shared.processes import ChildProcess
from shared.settings import Settings, load_settings
from shared.wire_client import WorkerConnection

log = logging.getLogger(__name__)
T = TypeVar("T")
_STATE_TTL_S = 1.0


class _LoopResources:
    """Clients bound to one event loop (httpx and asyncio streams cannot cross loops)."""

    def __init__(self) -> None:
        self.hosts: dict[str, HostClient] = {}
        self.workers: dict[str, WorkerConnection] = {}
        self.replicating: dict[str, asyncio.Task[None]] = {}  # model id -> its missing replicas' load
        self.states: list[HostState] = []
        self.states_at = 0.0
        self.refresh: asyncio.Future[list[HostState]] | None = None


class _LoopThread:
    """A private event loop for the synchronous API."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="dukat-manager", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class ModelManager:
    def __init__(
        self,
        models_dir: str | Path = "models",
        config_path: str | Path | None = None,
        default_model: str | None = None,
        device_map: str = "auto",
        *,
        hosts: list[str] | None = None,
        settings: Settings | None = None,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        overrides: dict[str, Any] = {"models_dir": str(models_dir), "device_map": device_map}
        if config_path is not None:
            overrides["config_path"] = str(config_path)
        if default_model is not None:
            overrides["default_model"] = default_model
        if hosts is not None:
            overrides["worker_hosts"] = tuple(hosts)
        self.settings = settings or load_settings(overrides=overrides)
        Path(self.settings.models_dir).mkdir(parents=True, exist_ok=True)
        self.config = ConfigStore(Path(self.settings.config_path))
        self.config.read()  # created when missing; an invalid file fails here, loudly
        self._host_urls: list[str] = list(self.settings.worker_hosts)
        self._local_host: ChildProcess | None = None
        self._host_start = threading.Lock()
        self._loops: dict[asyncio.AbstractEventLoop, _LoopResources] = {}
        self._sync: _LoopThread | None = None
        self._defaults: tuple[object, dict[str, SamplingParams | None]] = (None, {})
        self.metrics = metrics
        atexit.register(self.close)

    # ---- plumbing -------------------------------------------------------------------------

    def _res(self) -> _LoopResources:
        loop = asyncio.get_running_loop()
        res = self._loops.get(loop)
        if res is None:
            res = self._loops[loop] = _LoopResources()
        return res

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._sync is None:
            self._sync = _LoopThread()
        return self._sync.run(coro)

    async def start(self) -> None:
        """Make sure a worker host exists (starting a local one when none is configured, and again
        when the local one died: its workers died with it, the next request loads them anew)."""
        if not self._host_urls or (self._local_host is not None and not self._local_host.alive()):
            await asyncio.to_thread(self._start_local_host)

    def _start_local_host(self) -> None:
        with self._host_start:
            dead = self._local_host
            if dead is not None and not dead.alive():
                code = dead.proc.returncode if dead.proc else None
                log.error("the local worker host exited (code %s); starting a new one", code)
                self._local_host = None
                self._host_urls = list(self.settings.worker_hosts)
                for res in self._loops.values():
                    res.states_at = 0.0
            if self._host_urls:
                return
            s = self.settings
            args = ["--bind", "127.0.0.1", "--port", "0", "--models-dir", str(s.models_dir)]
            self._local_host = ChildProcess("worker.host", args, ready_prefix="DUKAT_HOST_READY")
            self._host_urls = [self._local_host.start(timeout=120)]
            log.info("started a local worker host at %s", self._host_urls[0])

    def _host(self, url: str) -> HostClient:
        res = self._res()
        client = res.hosts.get(url)
        if client is None:
            s = self.settings
            client = res.hosts[url] = HostClient(
                url, load_timeout=s.load_timeout_s + 60, state_timeout=s.host_state_timeout_s
            )
        return client

    def _worker(self, worker: WorkerState) -> WorkerConnection:
        res = self._res()
        address = worker.address or ""
        conn = res.workers.get(address)
        if conn is None:
            observer = self.metrics.for_model(worker.model_id) if self.metrics else None
            conn = res.workers[address] = WorkerConnection(address, observer=observer)
        return conn

    @property
    def host_urls(self) -> list[str]:
        return list(self._host_urls)

    def in_flight(self) -> dict[str, int]:
        """Requests this gateway has on each model's workers (its event loop's connections)."""
        counts: dict[str, int] = {}
        models = {w.address: w.model_id for h in self._res().states for w in h.models}
        for address, conn in self._res().workers.items():
            model_id = models.get(address)
            if model_id is not None:
                counts[model_id] = counts.get(model_id, 0) + conn.in_flight
        return counts

    async def host_states(self, *, fresh: bool = False) -> list[HostState]:
        """Every reachable host's state, cached for a second (hosts are the truth, this is a view).

        One refresh at a time: requests arriving while one is in flight wait for it rather than
        each asking every host again.
        """
        await self.start()
        res = self._res()
        if fresh:  # after a change: a refresh already in flight may predate it
            return await self._refresh_states(res)
        if time.monotonic() - res.states_at < _STATE_TTL_S:
            return res.states
        if res.refresh is None or res.refresh.done():
            res.refresh = asyncio.ensure_future(self._refresh_states(res))
        return await asyncio.shield(res.refresh)

    async def _refresh_states(self, res: _LoopResources) -> list[HostState]:
        urls = list(self._host_urls)
        results = await asyncio.gather(*(self._host(u).state() for u in urls), return_exceptions=True)
        states = []
        for url, result in zip(urls, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("worker host %s unreachable: %s", url, result)
            else:
                result.url = url
                states.append(result)
        res.states, res.states_at = states, time.monotonic()
        return states

    @contextlib.contextmanager
    def _seeing_failures(self) -> Iterator[None]:
        """A worker that failed mid-request is news: the next request asks the hosts again."""
        try:
            yield
        except WorkerFailedError:
            self._invalidate()
            raise

    def _invalidate(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._res().states_at = 0.0

    async def _find(self, model_id: str, *, fresh: bool = False) -> tuple[HostState, WorkerState] | None:
        found = await self._find_all(model_id, fresh=fresh)
        return found[0] if found else None

    async def _find_all(self, model_id: str, *, fresh: bool = False) -> list[tuple[HostState, WorkerState]]:
        """Every replica of `model_id` (in any status), host by host."""
        return [
            (h, w) for h in await self.host_states(fresh=fresh) for w in h.models if w.model_id == model_id
        ]

    # ---- models and the config file --------------------------------------------------------

    def resolve_id(self, model_id: str | None) -> str:
        if model_id:
            return model_id
        default = self.config.view().default_model or self.settings.default_model
        if not default:
            raise InvalidRequestError("no model given and no default model is set", param="model")
        return default

    def defaults_for(self, model_id: str) -> SamplingParams | None:
        """The config's default_parameters of `model_id`, converted once per version of the file."""
        config = self.config.view()
        if self._defaults[0] is not config:
            self._defaults = (config, {})
        cache = self._defaults[1]
        if model_id not in cache:
            entry = config.models.get(model_id)
            cache[model_id] = params_from_mapping(entry.default_parameters) if entry else None
        return cache[model_id]

    async def is_known(self, model_id: str) -> bool:
        if model_id in self.config.view().models or Path(model_id, "config.json").is_file():
            return True
        return any(m.model_id == model_id for m in await self.alocal_models())

    def _register(self, model_id: str, quantization: str | None = None) -> None:
        """Give a downloaded or loaded model its config entry, keeping what is there."""
        if model_id in self.config.view().models:
            return
        # No quantization recorded for a plain download: the setting's default decides at load time.
        entry = ModelEntry(description="", quantization=quantization)  # type: ignore[arg-type]
        self.config.set_entry(model_id, entry)

    # ---- async API (the gateway's routes) -----------------------------------------------------

    async def alocal_models(self) -> list[LocalModelInfo]:
        hosts = await self.host_states()
        lists = await asyncio.gather(
            *(self._host(h.url).local_models() for h in hosts), return_exceptions=True
        )
        seen: dict[str, LocalModelInfo] = {}
        for result in lists:
            if not isinstance(result, BaseException):
                for m in result:
                    seen.setdefault(m.model_id, m)
        return list(seen.values())

    async def _pick_host(
        self, model_id: str, device: str, need: Need | None = None, avoid: frozenset[str] = frozenset()
    ) -> HostState:
        hosts = await self.host_states(fresh=True)
        if not hosts:
            raise NoCapacityError("no worker host is reachable")
        if not offering(hosts, device):
            offered = ", ".join(sorted({d.name for h in hosts for d in h.devices})) or "none"
            raise DeviceUnavailableError(
                f'no worker host offers device {device!r} (offered: {offered}; or use "auto")', param="device"
            )
        host = place(model_id, hosts, device=device, need=need, avoid=avoid)
        if host is None:
            raise NoCapacityError(no_room_message(model_id, hosts, need or {}, device))
        return host

    async def _need(self, model_id: str, quantization: str | None, model_type: str | None) -> Need:
        """Bytes a load of `model_id` would take, by device kind, as a host estimates it from the files
        (empty when no host has them yet: the host that downloads them checks again)."""
        cmd = EstimateCommand(model_id=model_id, quantization=quantization, model_type=model_type)  # type: ignore[arg-type]
        for host in await self.host_states():
            with contextlib.suppress(DukatError):
                estimate = await self._host(host.url).estimate(cmd)
                if estimate.bytes_by_kind:
                    return estimate.bytes_by_kind
        return {}

    async def aload_model(
        self,
        model_id: str,
        quantization: str | None = None,
        device: str | None = None,
        *,
        replicas: int | None = None,
        request_id: str = "",
    ) -> WorkerState:
        """Load `model_id` (its `replicas`, default: the config file's, else one); the first replica's
        state. Placement is memory-aware: a host with room, else one where idle models can go."""
        entry = self.config.read().models.get(model_id)
        # None: the host picks the default for the model's type (it knows the type; we may not).
        quant = quantization or (entry.quantization if entry else None)
        found = [
            f for f in await self._find_all(model_id, fresh=True) if f[1].status in ("loading", "loaded")
        ]
        for _, worker in found:
            _check_same_load(worker, quantization, device)
        wanted = replicas or (entry.replicas if entry and entry.replicas else 1)
        device = device or self.settings.device_map
        model_type = entry.model_type if entry else None
        keep_alive = parse_keep_alive(entry.keep_alive) if entry and entry.keep_alive is not None else None
        cmd = LoadCommand(model_id=model_id, quantization=quant, device=device, model_type=model_type,  # type: ignore[arg-type]
                          keep_alive_s=keep_alive, request_id=request_id)  # fmt: skip
        loads = [self._load_on(found[0][0], cmd)] if found else []
        missing = wanted - len(found)
        if missing > 0:
            need = await self._need(model_id, quant, model_type)
            avoid = frozenset(h.url for h, _ in found)
            for _ in range(missing):
                try:
                    host = await self._pick_host(model_id, device, need, avoid)
                except NoCapacityError:
                    if loads:  # fewer replicas than asked: serve with what fits
                        break
                    raise
                avoid |= {host.url}
                loads.append(self._load_on(host, cmd))
        results = await asyncio.gather(*loads, return_exceptions=True)
        states = [r for r in results if isinstance(r, WorkerState)]
        if not states:
            raise next(r for r in results if isinstance(r, BaseException))
        self._register(model_id, quant)
        return states[0]

    async def _load_on(self, host: HostState, cmd: LoadCommand) -> WorkerState:
        asked_at = time.time()
        try:
            state = await self._host(host.url).load(cmd)
        finally:
            self._invalidate()
        if self.metrics is not None and state.started_at >= asked_at - 1.0:  # a load, not a repeat
            self.metrics.load_duration.labels(cmd.model_id).observe(state.load_seconds)
        return state

    async def aunload_model(self, model_id: str) -> None:
        found = await self._find(model_id, fresh=True)
        if found is None:
            raise NotFoundError(f"model {model_id!r} is not loaded; nothing to unload", param="model")
        for host, worker in await self._find_all(model_id):
            try:
                await self._host(host.url).unload(model_id)
            finally:
                self._invalidate()
            conn = self._res().workers.pop(worker.address or "", None)
            if conn is not None:
                await conn.close()

    async def astart_download(self, model_id: str, revision: str | None = None) -> DownloadJob:
        host = await self._pick_host(model_id, "auto")
        job = await self._host(host.url).start_download(DownloadCommand(model_id=model_id, revision=revision))
        job.id = f"{self._host_urls.index(host.url)}.{job.id}" if len(self._host_urls) > 1 else job.id
        return job

    async def adownload_job(self, job_id: str) -> DownloadJob:
        index, _, raw = job_id.rpartition(".")
        url = self._host_urls[int(index)] if index.isdigit() and int(index) < len(self._host_urls) else None
        url = url or (self._host_urls[0] if self._host_urls else None)
        if url is None:
            raise NoCapacityError("no worker host is reachable")
        job = await self._host(url).download(raw)
        job.id = job_id
        if job.status == "done":
            self._register(job.model_id)
        return job

    async def adownload_model(
        self,
        model_id: str,
        revision: str | None = None,
        progress: Callable[[DownloadJob], None] | None = None,
    ) -> DownloadJob:
        job = await self.astart_download(model_id, revision)
        while job.status in ("queued", "running"):
            if progress:
                progress(job)
            await asyncio.sleep(0.2)
            job = await self.adownload_job(job.id)
        if progress:
            progress(job)
        if job.status == "failed":
            from shared.errors import error_from_code

            raise error_from_code(job.error_code, job.error or "download failed", "model")
        return job

    async def ready_worker(self, model_id: str | None) -> tuple[str, WorkerState]:
        """A loaded worker of `model_id` (or the default), loading it first when allowed."""
        mid, workers = await self.ready_workers(model_id)
        return mid, workers[0]

    async def ready_workers(
        self, model_id: str | None, request_id: str = ""
    ) -> tuple[str, list[WorkerState]]:
        """The loaded replicas of `model_id` (or the default), loading one first when allowed; missing
        replicas (fewer than the config file asks, a host lost) are loaded in the background."""
        mid = self.resolve_id(model_id)
        found = [w for _, w in await self._find_all(mid)]
        loaded = [w for w in found if w.status == "loaded"]
        if loaded:
            self._replicate(mid, len(found), request_id)
            return mid, loaded
        failed = next((w for w in found if w.status == "failed"), None)
        if failed is not None and len(found) == 1:
            raise ModelLoadFailedError(
                f"model {mid!r} failed: {failed.error}; load it again with POST /api/models/load",
                param="model",
            )
        if not found and not await self.is_known(mid):
            raise ModelNotFoundError(f"The model {mid!r} does not exist", param="model")
        if not found and not self.settings.auto_load:
            raise ModelNotLoadedError(f"model {mid!r} is not loaded", param="model")
        waiting = self.metrics.waiting.labels(mid) if self.metrics else None
        if waiting is not None:
            waiting.inc()
        try:
            return mid, [await self.aload_model(mid, request_id=request_id)]
        finally:
            if waiting is not None:
                waiting.dec()

    def _replicate(self, model_id: str, have: int, request_id: str) -> None:
        entry = self.config.view().models.get(model_id)
        if not entry or not entry.replicas or have >= entry.replicas:
            return
        res = self._res()
        task = res.replicating.get(model_id)
        if task is None or task.done():
            res.replicating[model_id] = asyncio.ensure_future(self._load_missing(model_id, request_id))

    async def _load_missing(self, model_id: str, request_id: str) -> None:
        try:
            await self.aload_model(model_id, request_id=request_id)
        except DukatError as exc:
            log.warning("loading more replicas of %s failed: %s rid=%s", model_id, exc.message, request_id)

    async def agenerate_request(
        self, model_id: str | None, request: GenerateRequest
    ) -> tuple[str, GenerateResult]:
        mid, workers = await self.ready_workers(model_id, request.request_id)
        with self._seeing_failures():
            return mid, await replicas.generate(workers, self._worker, request, self.defaults_for(mid))

    async def astream_request(
        self, model_id: str | None, request: GenerateRequest
    ) -> tuple[str, AsyncIterator[str | GenerateResult]]:
        mid, workers = await self.ready_workers(model_id, request.request_id)
        return mid, replicas.stream(workers, self._worker, request, self.defaults_for(mid))

    async def aembed(
        self, model_id: str | None, inputs: list[str | list[int]], keep_alive: float | None = None
    ) -> tuple[str, EmbedResult]:
        mid, workers = await self.ready_workers(model_id)
        request = EmbedRequest(inputs=inputs, keep_alive=keep_alive)
        with self._seeing_failures():
            return mid, await replicas.embed(workers, self._worker, request)

    async def agenerate(
        self,
        prompt: str,
        model_id: str | None = None,
        system_prompt: str | None = None,
        temperature: float | None = None,
        max_new_tokens: int | None = None,
        **params: Any,
    ) -> tuple[str, dict[str, Any]]:
        sampling = params_from_mapping(
            {"temperature": temperature, "max_new_tokens": max_new_tokens, **params}
        )
        messages = [Message(role="user", content=prompt)]
        if system_prompt:
            messages.insert(0, Message(role="system", content=system_prompt))
        mid, result = await self.agenerate_request(
            model_id, GenerateRequest(messages=messages, params=sampling)
        )
        return result.text, _metadata(mid, result)

    async def aset_default_model(self, model_id: str) -> None:
        if not await self.is_known(model_id):
            raise ModelNotFoundError(f"The model {model_id!r} does not exist", param="model")
        self.config.set_default_model(model_id)

    async def alist_available_models(self) -> list[dict[str, Any]]:
        config = self.config.read()
        default = config.default_model or self.settings.default_model  # what a request without a model gets
        local = {m.model_id: m for m in await self.alocal_models()}
        loaded = {w.model_id: w for h in await self.host_states() for w in h.models}
        out = []
        for mid in sorted(set(config.models) | set(local)):
            entry, disk, worker = config.models.get(mid), local.get(mid), loaded.get(mid)
            out.append(
                {
                    "id": mid,
                    "description": entry.description if entry else "",
                    "model_type": (entry.model_type if entry else None)
                    or (disk.model_type if disk else None),
                    "quantization": entry.quantization if entry else self.settings.default_quantization,
                    "default_parameters": dict(entry.default_parameters) if entry else {},
                    "downloaded": disk is not None,
                    "size_bytes": disk.size_bytes if disk else 0,
                    "state": worker.status if worker else "available",
                    "device": worker.device if worker else None,
                    "task": worker.task if worker else None,
                    "default": mid == default,
                }
            )
        return out

    async def alist_loaded_models(self) -> list[dict[str, Any]]:
        return [
            {
                **worker_view(w),
                "host": h.url,
                "error": w.error,
                "error_code": w.error_code,
                "log_tail": w.log_tail if w.status == "failed" else [],
            }
            for h in await self.host_states(fresh=True)
            for w in h.models
        ]

    # ---- the seed's synchronous API ---------------------------------------------------------

    def download_model(self, model_id: str, revision: str | None = None) -> str:
        """Download `model_id` into models_dir (with a progress bar); returns its folder."""
        from gateway.progress import DownloadBar

        with DownloadBar(model_id) as bar:
            job = self._run(self.adownload_model(model_id, revision, progress=bar.update))
        return job.path or ""

    def load_model(
        self, model_id: str, quantization: str | None = None, device: str | None = None
    ) -> dict[str, Any]:
        return worker_view(self._run(self.aload_model(model_id, quantization, device)))

    def unload_model(self, model_id: str) -> bool:
        self._run(self.aunload_model(model_id))
        return True

    def generate(
        self,
        prompt: str,
        model_id: str | None = None,
        system_prompt: str | None = None,
        temperature: float | None = None,
        max_new_tokens: int | None = None,
        **params: Any,
    ) -> tuple[str, dict[str, Any]]:
        return self._run(
            self.agenerate(prompt, model_id, system_prompt, temperature, max_new_tokens, **params)
        )

    def list_available_models(self) -> list[dict[str, Any]]:
        return self._run(self.alist_available_models())

    def list_loaded_models(self) -> list[dict[str, Any]]:
        return self._run(self.alist_loaded_models())

    def set_default_model(self, model_id: str) -> bool:
        self._run(self.aset_default_model(model_id))
        return True

    def close(self) -> None:
        """Stop the local worker host (and with it every model worker it started)."""
        if self._sync is not None:
            sync, self._sync = self._sync, None
            with contextlib.suppress(Exception):
                sync.run(self.aclose())
            sync.stop()
        with self._host_start:
            host, self._local_host = self._local_host, None
            if host is not None:
                self._host_urls = list(self.settings.worker_hosts)
        if host is not None:
            host.stop()

    async def aclose(self) -> None:
        res = self._loops.pop(asyncio.get_running_loop(), None)
        if res is not None:
            await asyncio.gather(*(c.close() for c in res.workers.values()), return_exceptions=True)
            await asyncio.gather(*(c.close() for c in res.hosts.values()), return_exceptions=True)

    def __enter__(self) -> ModelManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_same_load(worker: WorkerState, quantization: str | None, device: str | None) -> None:
    """A load of a model that is loading or loaded is idempotent, unless it asks for something else
    explicitly: then it is a conflict, never the old worker passed off as the new one."""
    wrong: dict[str, str] = {}
    if device not in (None, "auto") and device != worker.device:
        wrong["device"] = f"device {worker.device!r}, not {device!r}"
    if quantization is not None and quantization != worker.quantization:
        wrong["quantization"] = f"quantization {worker.quantization!r}, not {quantization!r}"
    if wrong:
        raise ConflictError(
            f"model {worker.model_id!r} is already {worker.status} with {' and '.join(wrong.values())}; "
            "unload it first to load it differently",
            param=next(reversed(wrong)),
        )


def worker_view(w: WorkerState) -> dict[str, Any]:
    """A model worker as the management API and the seed's `load_model` show it."""
    return {
        "id": w.model_id,
        "state": w.status,
        "device": w.device,
        "quantization": w.quantization,
        "model_type": w.model_type,
        "task": w.task,
        "memory_bytes": w.memory_bytes,
        "load_seconds": w.load_seconds,
        "pid": w.pid,
    }


def _metadata(model_id: str, result: GenerateResult) -> dict[str, Any]:
    t = result.timings
    return {
        "model": model_id,
        "finish_reason": result.finish_reason,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
        "time_to_first_token_s": t.first_token_s,
        "generation_time_s": t.total_s,
        "tokens_per_second": t.tokens_per_s,
    }
