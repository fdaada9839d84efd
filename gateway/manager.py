"""The async model manager: the one orchestrator of download / load / unload, the default model and
the listings.

The gateway's routes call it, and the seed's synchronous `ModelManager` (gateway/seed_api.py) runs
it on a loop of its own. Nothing here is the truth about anything: what is loaded where comes from
the worker hosts (gateway/hosts.py), models and defaults from the config file. How a request
reaches one of the workers it finds (or loads) is gateway/dispatch.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import get_args

import msgspec

from gateway.dispatch import Dispatcher
from gateway.hosts import HostDirectory
from gateway.metrics import GatewayMetrics
from gateway.model_admin import ModelAdmin, not_here, shown_quantization
from gateway.request_log import note
from gateway.schemas.models import CREATED, LoadedModel, Model, owner_of
from shared.errors import (
    DukatError,
    InvalidRequestError,
    ModelLoadFailedError,
    ModelNotLoadedError,
    NoCapacityError,
    NotFoundError,
    UnsupportedModelTypeError,
    UnsupportedTaskError,
    error_from_code,
)
from shared.generation import SamplingParams, params_from_mapping
from shared.host_api import (
    LIVE_STATUSES,
    DownloadCommand,
    DownloadJob,
    LoadCommand,
    LocalModel,
    WorkerState,
)
from shared.keep_alive import parse_keep_alive
from shared.model_config import ConfigStore, ModelEntry
from shared.model_ids import is_explicit_path
from shared.model_types import Task, get_model_type
from shared.settings import Quantization, Settings

log = logging.getLogger(__name__)
# How often a request waiting for capacity (DUKAT_CAPACITY_WAIT_S) asks the hosts again.
CAPACITY_POLL_S = 1.0
# How long the hosts' listing of models_dir answers whether an id is a LoRA adapter.
_LISTING_S = 2.0


class AsyncModelManager:
    """The gateway's core, what the routes call. Owns the config file (ConfigStore), the host
    directory (HostDirectory), request dispatch (Dispatcher: connections, replica choice, retries)
    and model administration (ModelAdmin: show, delete); itself decides loads (placement, replicas),
    unloads, downloads, the default model and the listings.

    Must not: hold model state of its own (the hosts' reports are the truth; any gateway replica
    answers any request), talk to a model worker but through its Dispatcher, or block its event
    loop. Lives on one event loop: its host clients and worker connections are bound to it.
    """

    def __init__(self, settings: Settings, *, metrics: GatewayMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        Path(settings.models_dir).mkdir(parents=True, exist_ok=True)
        self.config = ConfigStore(Path(settings.config_path))
        self.config.read()  # created when missing; an invalid file fails here, loudly
        self.hosts = HostDirectory(settings)
        self.dispatch = Dispatcher(settings, self.hosts, self, metrics)
        self.admin = ModelAdmin(settings, self.hosts, self.config)
        self._replicating: dict[str, asyncio.Task[None]] = {}  # model id -> its missing replicas' load
        # model id -> the load that requests finding it unloaded share
        self._auto_loads: dict[str, asyncio.Future[list[WorkerState | LoadedModel]]] = {}
        self._defaults: tuple[object, dict[str, SamplingParams | None]] = (None, {})
        # Loads this gateway has asked for and not seen answered: model id -> when first asked. A
        # host shows a worker only once it has placed it; a request meanwhile waits, never a 503.
        self._asked: dict[str, list[float]] = {}
        # LoRA adapter id -> its base model's id, as the hosts' catalogs said (an adapter's base is
        # in its files: it does not change under the same id).
        self._adapter_bases: dict[str, str] = {}
        self._listing: tuple[float, asyncio.Future[list[LocalModel]]] | None = None

    async def start(self) -> None:
        await self.hosts.start()

    async def close(self) -> None:
        """Close the worker connections and the host directory (which stops a local host)."""
        await self.dispatch.connections.close()
        await self.hosts.close()

    async def in_flight(self) -> dict[str, int]:
        """Requests this gateway has on each model's workers."""
        return self.dispatch.connections.in_flight(await self.hosts.states())

    # ---- models and the config file --------------------------------------------------------

    def resolve_id(self, model_id: str | None) -> str:
        if model_id:
            return model_id
        default = self.config.view().default_or(self.settings.default_model)
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

    def keep_alive_for(self, model_id: str) -> float | None:
        """The config entry's keep_alive of `model_id` in seconds (None: none set, or unreadable)."""
        entry = self.config.view().models.get(model_id)
        if entry is None or entry.keep_alive is None:
            return None
        try:
            return parse_keep_alive(entry.keep_alive)
        except ValueError:  # the file's check refuses these; never fail a request over one
            return None

    async def is_known(self, model_id: str) -> bool:
        # A folder only when written as a path (the Python API's callers; the HTTP routes let clients
        # name paths only when the config lists them): a bare name is never looked up in the cwd.
        folder = Path(model_id).expanduser() if is_explicit_path(model_id) else None
        if model_id in self.config.view().models or (folder and (folder / "config.json").is_file()):
            return True
        return any(m.id == model_id for m in await self.local_models())

    async def adapter_base(self, model_id: str) -> str | None:
        """The base model of `model_id` when it is a LoRA adapter in the hosts' models_dir (else None)."""
        if model_id in self._adapter_bases:
            return self._adapter_bases[model_id]
        listing = self._listing
        if listing is None or listing[0] < time.monotonic() - _LISTING_S:
            # One listing for a burst of requests naming models that are not loaded.
            listing = self._listing = (time.monotonic(), asyncio.ensure_future(self.local_models()))
        local = next((m for m in await asyncio.shield(listing[1]) if m.id == model_id), None)
        if local is None or local.architecture != "lora":
            return None
        if local.base_model is None or local.error:
            message = f"LoRA adapter {model_id!r} cannot be served: {local.error}"
            raise InvalidRequestError(message, param="model")
        self._adapter_bases[model_id] = local.base_model
        return local.base_model

    async def known_ids(self) -> list[str]:
        """Every model id of the config file and of the hosts' models_dir."""
        return [*self.config.view().models, *(m.id for m in await self.local_models())]

    def _register(self, model_id: str, quantization: str | None = None) -> None:
        """Give a downloaded or loaded model its config entry, keeping what is there."""
        if model_id in self.config.view().models or self.config.problem:
            return  # a broken file refuses writes; the model works without its entry
        # No quantization recorded for a plain download: the setting's default decides at load time.
        entry = ModelEntry(description="", quantization=quantization)  # type: ignore[arg-type]
        self.config.set_entry(model_id, entry)

    async def local_models(self) -> list[LocalModel]:
        hosts = await self.hosts.states()
        lists = await asyncio.gather(
            *(self.hosts.client(h.url).local_models() for h in hosts), return_exceptions=True
        )
        seen: dict[str, LocalModel] = {}
        for result in lists:
            if not isinstance(result, BaseException):
                for m in result:
                    seen.setdefault(m.id, m)
        return list(seen.values())

    # ---- load and unload --------------------------------------------------------------------

    async def load_model(
        self,
        model_id: str,
        quantization: str | None = None,
        device: str | None = None,
        *,
        replicas: int | None = None,
        request_id: str = "",
    ) -> LoadedModel:
        """Load `model_id`: `replicas` workers (default: the config file's, else one), spread over the
        hosts with room for its estimated memory (one host each while there are hosts, then several
        per host: the host places them on its devices). Whether a load joins a worker already there,
        or is a conflict, is the host's call: it is the one that knows."""
        if (base := await self.adapter_base(model_id)) is not None:
            loaded = await self.load_model(
                base, quantization, device, replicas=replicas, request_id=request_id
            )
            return await self._adapter_on_workers(model_id, base, load=True) or loaded
        asked = self._asked.setdefault(model_id, [])
        stamp = time.time()
        asked.append(stamp)
        try:
            return await self._load(model_id, quantization, device, replicas, request_id)
        finally:
            asked.remove(stamp)
            if not asked:
                self._asked.pop(model_id, None)

    async def _load(
        self,
        model_id: str,
        quantization: str | None,
        device: str | None,
        replicas: int | None,
        request_id: str,
    ) -> LoadedModel:
        if quantization is not None and quantization not in get_args(Quantization):
            # The Python API's check; over HTTP the request schema says the same first.
            raise InvalidRequestError(
                f"quantization must be '4bit', '8bit' or 'none', not {quantization!r}", param="quantization"
            )
        entry = self.config.read().models.get(model_id)
        keep_alive = parse_keep_alive(entry.keep_alive) if entry and entry.keep_alive is not None else None
        cmd = LoadCommand(
            model_id=model_id,
            quantization=quantization,  # type: ignore[arg-type]
            device=device,
            default_quantization=entry.quantization if entry else None,
            default_device=self.settings.device_map,
            model_type=entry.model_type if entry else None,
            keep_alive_s=keep_alive,
            request_id=request_id,
            gguf_file=entry.gguf_file if entry else None,
        )
        workers = await self.hosts.find_all(model_id, fresh=True)
        # Its hosts, once each (a host may run several of its workers).
        found = list({h.url: h for h, w in workers if w.status in LIVE_STATUSES}.values())
        wanted = replicas or (entry.replicas if entry and entry.replicas else 1)
        hosts = found[: max(wanted, 1)]
        if len(hosts) < wanted:
            need = await self.hosts.need(cmd)
            avoid = frozenset(h.url for h in found)
            while len(hosts) < wanted:
                try:
                    host = await self.hosts.pick(model_id, device or cmd.default_device, need, avoid)
                except NoCapacityError:
                    if hosts:  # fewer replicas than asked: serve with what fits
                        break
                    raise
                avoid |= {host.url}
                hosts.append(host)
        # Each host's share of the workers: more workers than hosts go to the hosts' devices.
        shares = [wanted // len(hosts) + (i < wanted % len(hosts)) for i in range(len(hosts))]
        loads = [
            self._load_on(h.url, msgspec.structs.replace(cmd, replicas=n))
            for h, n in zip(hosts, shares, strict=True)
        ]
        results = await asyncio.gather(*loads, return_exceptions=True)
        loaded = [r for r in results if isinstance(r, LoadedModel)]
        if not loaded:
            raise next(r for r in results if isinstance(r, BaseException))
        self._register(model_id, quantization or cmd.default_quantization)
        return loaded[0]

    async def _load_on(self, url: str, cmd: LoadCommand) -> LoadedModel:
        asked_at = time.time()
        try:
            state = await self.hosts.client(url).load(cmd)
        finally:
            self.hosts.invalidate()
        if self.metrics is not None and state.started_at >= asked_at - 1.0:  # a load, not a repeat
            self.metrics.load_duration.labels(cmd.model_id).observe(state.load_seconds)
        return loaded_model(state, url)

    async def _adapter_on_workers(self, adapter: str, base: str, *, load: bool) -> LoadedModel | None:
        """Load (or unload) a LoRA adapter on every loaded worker of its base: the first one's record
        under the adapter's id (None: no worker of the base had it to unload)."""
        shown = None
        for host, worker in await self.hosts.find_all(base, fresh=True):
            if worker.status != "loaded":
                continue
            answer = await self.dispatch.connections.to(worker).adapter(adapter, load=load)
            if shown is None and (load or answer.was_loaded):
                record = msgspec.structs.replace(worker, model_id=adapter, adapters=answer.loaded)
                shown = loaded_model(record, host.url)
        self.hosts.invalidate()
        return shown

    async def unload_model(self, model_id: str) -> None:
        if (base := await self.adapter_base(model_id)) is not None:
            if await self._adapter_on_workers(model_id, base, load=False) is None:
                message = f"LoRA adapter {model_id!r} is not loaded; nothing to unload"
                raise NotFoundError(message, param="model")
            return
        found = await self.hosts.find_all(model_id, fresh=True)
        if not found:
            raise NotFoundError(f"model {model_id!r} is not loaded; nothing to unload", param="model")
        for url in dict.fromkeys(host.url for host, _ in found):  # a host unloads all of its workers
            try:
                await self.hosts.client(url).unload(model_id)
            finally:
                self.hosts.invalidate()
        for _, worker in found:
            await self.dispatch.connections.drop(worker)

    async def ready_workers(
        self, model_id: str | None, request_id: str = ""
    ) -> tuple[str, list[WorkerState]]:
        """The loaded replicas of `model_id` (or the default), loading one first when allowed; missing
        replicas (fewer than the config file asks, a host lost) are loaded in the background."""
        mid = self.resolve_id(model_id)
        note(model=mid)
        found = [w for _, w in await self.hosts.find_all(mid)]
        if not found and (base := await self.adapter_base(mid)) is not None:
            return mid, (await self.ready_workers(base, request_id))[1]  # its rows run on the base's workers
        loaded = [w for w in found if w.status == "loaded"]
        if loaded:
            self._replicate(mid, len(found), request_id)
            return mid, loaded
        failed = next((w for w in found if w.status == "failed"), None)
        # With auto-load on, a failed model gets a fresh load (the host starts it anew).
        if failed is not None and len(found) == 1 and not self.settings.auto_load:
            raise ModelLoadFailedError(
                f"model {mid!r} failed: {failed.error}; load it again with POST /api/models/load",
                param="model",
            )
        loading = mid in self._asked or any(w.status == "loading" for w in found)
        if not found and not loading and not await self.is_known(mid):
            raise not_here(mid, await self.known_ids())
        if not loading and not self.settings.auto_load:  # joining a load under way starts nothing
            raise ModelNotLoadedError(f"model {mid!r} is not loaded", param="model")
        waiting = self.metrics.waiting.labels(mid) if self.metrics else None
        if waiting is not None:
            waiting.inc()
        # One load per model for every request that finds it unloaded: a burst of 200 on a cold model
        # asked the host its state 200 times at once (httpx's pool timed out: 503s).
        task = self._auto_loads.get(mid)
        if task is None or task.done():
            task = self._auto_loads[mid] = asyncio.ensure_future(self._auto_load(mid, request_id))
        try:
            # A model that is loading is waited for (the request's deadline at most), never a 503 at once;
            # the shared load goes on for the other requests when this one's deadline passes.
            return mid, await asyncio.wait_for(asyncio.shield(task), self.settings.request_timeout_s)
        except TimeoutError:
            raise await self._still_loading(mid) from None
        finally:
            if waiting is not None:
                waiting.dec()

    async def _auto_load(self, mid: str, request_id: str) -> list[WorkerState | LoadedModel]:
        loaded_now = await self._load_for_request(mid, request_id)
        # Fresh: a cached view (or a refresh already in flight) may still say `loading`, no address.
        found = [w for _, w in await self.hosts.find_all(mid, fresh=True)]
        return [w for w in found if w.status == "loaded"] or [loaded_now]

    async def _load_for_request(self, model_id: str, request_id: str) -> LoadedModel:
        """A request's load. Without capacity (no host up, as when a host pool scaled to zero; or none
        with room) it waits up to DUKAT_CAPACITY_WAIT_S for some, asking the hosts again every second,
        counted as waiting all along; then its 503 is counted as refused for capacity."""
        deadline = time.monotonic() + self.settings.capacity_wait_s
        while True:
            try:
                return await self.load_model(model_id, request_id=request_id)
            except NoCapacityError:
                left = deadline - time.monotonic()
                if left <= 0:
                    if self.metrics is not None:
                        self.metrics.capacity_refusals.labels(model_id).inc()
                    raise
                await asyncio.sleep(min(CAPACITY_POLL_S, left))

    async def _still_loading(self, model_id: str) -> ModelNotLoadedError:
        """The 503 of a request whose deadline passed while its model loads: since when it loads."""
        found = await self.hosts.find(model_id, fresh=True)
        began = found[1].started_at if found and found[1].status == "loading" else None
        began = began or min(self._asked.get(model_id) or [0.0])
        so_far = f" ({time.time() - began:.0f} s so far)" if began else ""
        message = f"starting: model {model_id!r} is loading{so_far}; retry shortly"
        return ModelNotLoadedError(message, param="model")

    def _replicate(self, model_id: str, have: int, request_id: str) -> None:
        entry = self.config.view().models.get(model_id)
        if not entry or not entry.replicas or have >= entry.replicas:
            return
        task = self._replicating.get(model_id)
        if task is None or task.done():
            self._replicating[model_id] = asyncio.ensure_future(self._load_missing(model_id, request_id))

    async def _load_missing(self, model_id: str, request_id: str) -> None:
        try:
            await self.load_model(model_id, request_id=request_id)
        except DukatError as exc:
            log.warning("loading more replicas of %s failed: %s rid=%s", model_id, exc.message, request_id)

    # ---- downloads ----------------------------------------------------------------------------

    async def start_download(
        self, model_id: str, revision: str | None = None, file: str | None = None
    ) -> DownloadJob:
        host = await self.hosts.pick(model_id, "auto")
        cmd = DownloadCommand(model_id=model_id, revision=revision, file=file)
        job = await self.hosts.client(host.url).start_download(cmd)
        job.id = self.hosts.job_id(host.url, job.id)
        return job

    async def download_job(self, job_id: str) -> DownloadJob:
        url, raw = self.hosts.job_host(job_id)
        job = await self.hosts.client(url).download(raw)
        job.id = job_id
        if job.status == "done":
            self._register(job.model_id)
        return job

    async def download_model(
        self,
        model_id: str,
        revision: str | None = None,
        progress: Callable[[DownloadJob], None] | None = None,
    ) -> DownloadJob:
        """Start a download and follow it to its end; a failed one raises its error."""
        job = await self.start_download(model_id, revision)
        while job.status in ("queued", "running"):
            if progress:
                progress(job)
            await asyncio.sleep(self.settings.download_poll_s)
            job = await self.download_job(job.id)
        if progress:
            progress(job)
        if job.status == "failed":
            raise error_from_code(job.error_code, job.error or "download failed", "model")
        return job

    # ---- the default model and listings -------------------------------------------------------

    async def set_default_model(self, model_id: str) -> None:
        if not await self.is_known(model_id):
            raise not_here(model_id, await self.known_ids())
        await self._check_can_chat(model_id)
        self.config.set_default_model(model_id)

    async def _check_can_chat(self, model_id: str) -> None:
        """The default model answers requests that name no model: chats and completions."""
        entry = self.config.read().models.get(model_id)
        disk = next((m for m in await self.local_models() if m.id == model_id), None)
        name = (entry.model_type if entry else None) or (disk.model_type if disk else None)
        with contextlib.suppress(UnsupportedModelTypeError):
            task = get_model_type(name).task if name else None
            if task in (Task.EMBEDDING, Task.RERANK):
                raise UnsupportedTaskError(
                    f"model {model_id!r} is {'an embedding' if task is Task.EMBEDDING else 'a rerank'} model "
                    f"({name}); the default model must chat: "
                    "pick a chat model",
                    param="model",
                )

    async def available_models(self) -> list[Model]:
        """Every model of the config file and of the hosts' models_dir, with where it stands."""
        config = self.config.read()
        default = config.default_or(self.settings.default_model)
        local = {m.id: m for m in await self.local_models()}
        workers = [w for h in await self.hosts.states() for w in h.models]
        # An adapter is loaded where a worker of its base has it.
        loaded = {a: w for w in workers for a in w.adapters} | {w.model_id: w for w in workers}
        out = []
        for mid in sorted(set(config.models) | set(local)):
            entry, disk, worker = config.models.get(mid), local.get(mid), loaded.get(mid)
            model_type = (entry.model_type if entry else None) or (disk.model_type if disk else None)
            out.append(
                Model(
                    id=mid,
                    created=CREATED,
                    owned_by=owner_of(mid),
                    description=entry.description if entry else "",
                    model_type=model_type,
                    quantization=shown_quantization(entry, worker, model_type, self.settings),
                    default_parameters=dict(entry.default_parameters) if entry else {},
                    downloaded=disk is not None,
                    size_bytes=disk.size_bytes if disk else 0,
                    state=worker.status if worker else "loading" if mid in self._asked else "available",
                    device=worker.device if worker else None,
                    task=worker.task if worker else disk.task if disk else None,
                    architecture=disk.architecture if disk else None,
                    default=mid == default,
                    # vLLM's: an adapter's parent is its base model; root is what the id serves.
                    parent=disk.base_model if disk else None,
                    root=mid,
                )
            )
        return out

    async def loaded_models(self) -> list[LoadedModel]:
        return [loaded_model(w, h.url) for h in await self.hosts.states(fresh=True) for w in h.models]


def loaded_model(worker: WorkerState, host_url: str) -> LoadedModel:
    """The host's worker record as the management API shows it (its log only when it failed)."""
    fields = msgspec.structs.asdict(worker)
    if worker.status != "failed":
        fields["log_tail"] = []
    return LoadedModel(**fields, host=host_url)
