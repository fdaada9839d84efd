"""The async model manager: the one orchestrator of download / load / unload / generate.

The gateway's routes call it, and the seed's synchronous `ModelManager` (gateway/seed_api.py) runs
it on a loop of its own. Nothing here is the truth about anything: what is loaded where comes from
the worker hosts (gateway/hosts.py), models and defaults from the config file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import get_args

import msgspec

from gateway.hosts import HostDirectory
from gateway.model_admin import not_here, shown_quantization
from gateway.schemas.models import CREATED, LoadedModel, Model, owner_of
from shared.errors import (
    InvalidRequestError,
    ModelLoadFailedError,
    ModelNotLoadedError,
    NotFoundError,
    UnsupportedModelTypeError,
    UnsupportedTaskError,
    WorkerFailedError,
    error_from_code,
)
from shared.generation import (
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    GenerateResult,
    SamplingParams,
    params_from_mapping,
)
from shared.host_api import DownloadCommand, DownloadJob, LoadCommand, LocalModel, WorkerState
from shared.model_config import ConfigStore, ModelEntry
from shared.model_ids import is_explicit_path
from shared.model_types import Task, get_model_type
from shared.settings import Quantization, Settings
from shared.wire_client import WorkerConnection

log = logging.getLogger(__name__)
_DOWNLOAD_POLL_S = 0.2


class AsyncModelManager:
    """Lives on one event loop: its host clients and worker connections are bound to it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        Path(settings.models_dir).mkdir(parents=True, exist_ok=True)
        self.config = ConfigStore(Path(settings.config_path))
        self.config.read()  # created when missing; an invalid file fails here, loudly
        self.hosts = HostDirectory(settings)
        self._workers: dict[str, WorkerConnection] = {}
        self._defaults: tuple[object, dict[str, SamplingParams | None]] = (None, {})

    async def start(self) -> None:
        await self.hosts.start()

    async def close(self) -> None:
        """Close the worker connections and the host directory (which stops a local host)."""
        workers, self._workers = list(self._workers.values()), {}
        await asyncio.gather(*(c.close() for c in workers), return_exceptions=True)
        await self.hosts.close()

    def _worker(self, address: str) -> WorkerConnection:
        conn = self._workers.get(address)
        if conn is None:
            conn = self._workers[address] = WorkerConnection(address, token=self.hosts.token)
        return conn

    @contextlib.contextmanager
    def _seeing_failures(self) -> Iterator[None]:
        """A worker that failed mid-request is news: the next request asks the hosts again."""
        try:
            yield
        except WorkerFailedError:
            self.hosts.invalidate()
            raise

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
        # A folder only when written as a path (the Python API's callers; the HTTP routes let clients
        # name paths only when the config lists them): a bare name is never looked up in the cwd.
        folder = Path(model_id).expanduser() if is_explicit_path(model_id) else None
        if model_id in self.config.view().models or (folder and (folder / "config.json").is_file()):
            return True
        return any(m.id == model_id for m in await self.local_models())

    def _register(self, model_id: str, quantization: str | None = None) -> None:
        """Give a downloaded or loaded model its config entry, keeping what is there."""
        if model_id in self.config.view().models:
            return
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
        self, model_id: str, quantization: str | None = None, device: str | None = None
    ) -> LoadedModel:
        """Load `model_id` on the host that has it, else on the one placement picks. Whether this
        is a repeat (joined) or a conflict is the host's call: it is the one that knows."""
        if quantization is not None and quantization not in get_args(Quantization):
            # The Python API's check; over HTTP the request schema says the same first.
            raise InvalidRequestError(
                f"quantization must be '4bit', '8bit' or 'none', not {quantization!r}", param="quantization"
            )
        entry = self.config.read().models.get(model_id)
        cmd = LoadCommand(
            model_id=model_id,
            quantization=quantization,  # type: ignore[arg-type]
            device=device,
            default_quantization=entry.quantization if entry else None,
            default_device=self.settings.device_map,
            model_type=entry.model_type if entry else None,
            gguf_file=entry.gguf_file if entry else None,
        )
        found = await self.hosts.find(model_id, fresh=True)
        host = found[0] if found else await self.hosts.pick(model_id, device or cmd.default_device)
        try:
            state = await self.hosts.client(host.url).load(cmd)
        finally:
            self.hosts.invalidate()
        self._register(model_id, quantization or cmd.default_quantization)
        return loaded_model(state, host.url)

    async def unload_model(self, model_id: str) -> None:
        found = await self.hosts.find(model_id, fresh=True)
        if found is None:
            raise NotFoundError(f"model {model_id!r} is not loaded; nothing to unload", param="model")
        try:
            await self.hosts.client(found[0].url).unload(model_id)
        finally:
            self.hosts.invalidate()
        conn = self._workers.pop(found[1].address or "", None)
        if conn is not None:
            await conn.close()

    async def ready_worker(self, model_id: str | None) -> tuple[str, WorkerState]:
        """The loaded worker of `model_id` (or the default), loading it first when allowed."""
        mid = self.resolve_id(model_id)
        found = await self.hosts.find(mid)
        if found and found[1].status == "loaded":
            return mid, found[1]
        if found and found[1].status == "failed":
            w = found[1]
            raise ModelLoadFailedError(
                f"model {mid!r} failed: {w.error}; load it again with POST /api/models/load", param="model"
            )
        if found is None and not await self.is_known(mid):
            raise not_here(mid)
        if found is None and not self.settings.auto_load:
            raise ModelNotLoadedError(f"model {mid!r} is not loaded", param="model")
        return mid, await self.load_model(mid)

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
            await asyncio.sleep(_DOWNLOAD_POLL_S)
            job = await self.download_job(job.id)
        if progress:
            progress(job)
        if job.status == "failed":
            raise error_from_code(job.error_code, job.error or "download failed", "model")
        return job

    # ---- serving ------------------------------------------------------------------------------

    async def generate_request(
        self, model_id: str | None, request: GenerateRequest
    ) -> tuple[str, GenerateResult]:
        mid, worker = await self.ready_worker(model_id)
        with self._seeing_failures():
            return mid, await self._worker(worker.address or "").generate(request, self.defaults_for(mid))

    async def stream_request(
        self, model_id: str | None, request: GenerateRequest
    ) -> tuple[str, AsyncIterator[str | GenerateResult]]:
        mid, worker = await self.ready_worker(model_id)
        return mid, self._worker(worker.address or "").stream(request, self.defaults_for(mid))

    async def embed(self, model_id: str | None, inputs: list[str | list[int]]) -> tuple[str, EmbedResult]:
        mid, worker = await self.ready_worker(model_id)
        with self._seeing_failures():
            return mid, await self._worker(worker.address or "").embed(EmbedRequest(inputs=inputs))

    # ---- the default model and listings -------------------------------------------------------

    async def set_default_model(self, model_id: str) -> None:
        if not await self.is_known(model_id):
            raise not_here(model_id)
        await self._check_can_chat(model_id)
        self.config.set_default_model(model_id)

    async def _check_can_chat(self, model_id: str) -> None:
        """The default model answers requests that name no model: chats and completions."""
        entry = self.config.read().models.get(model_id)
        disk = next((m for m in await self.local_models() if m.id == model_id), None)
        name = (entry.model_type if entry else None) or (disk.model_type if disk else None)
        with contextlib.suppress(UnsupportedModelTypeError):
            if name and get_model_type(name).task == Task.EMBEDDING:
                raise UnsupportedTaskError(
                    f"model {model_id!r} is an embedding model ({name}); the default model must chat: "
                    "pick a chat model",
                    param="model",
                )

    async def available_models(self) -> list[Model]:
        """Every model of the config file and of the hosts' models_dir, with where it stands."""
        config = self.config.read()
        default = config.default_model or self.settings.default_model  # what a request without a model gets
        local = {m.id: m for m in await self.local_models()}
        loaded = {w.model_id: w for h in await self.hosts.states() for w in h.models}
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
                    state=worker.status if worker else "available",
                    device=worker.device if worker else None,
                    task=worker.task if worker else None,
                    default=mid == default,
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
