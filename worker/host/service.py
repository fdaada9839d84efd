"""One machine's models: its devices, downloads and model workers, and where a load goes.

The worker host's routes (worker/host/api.py) call a `Host`: a load is placed on a device with room for
its estimated memory (idle models evicted to make it), downloaded first when its files are not
here, and started (or joined) by the supervisor.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from functools import partial
from pathlib import Path

from shared.errors import ConflictError, DukatError
from shared.host_api import (
    RUNNING_STATUSES,
    Deleted,
    HostState,
    LoadCommand,
    LoadEstimate,
    LocalModel,
    WorkerState,
    device_kind,
)
from shared.keep_alive import describe, parse_keep_alive
from shared.model_types import ModelType, default_quantization, infer_model_type
from shared.settings import Quantization, Settings
from worker.host import model_files, room
from worker.host.catalog import list_local_models, local_gguf, model_type_of
from worker.host.devices import Gpus, offered_devices
from worker.host.download_jobs import DownloadJobs
from worker.host.downloads import resolve_model_path
from worker.host.idle_unload import KeepAlive
from worker.host.memory_estimate import TensorSizes
from worker.host.supervisor import Supervisor, WorkerSpec

log = logging.getLogger(__name__)


class Host:
    """What the host's routes call, for one machine: owns its devices (offered and measured), its
    download jobs, its Supervisor and keep-alive; places a load on a device (evicting idle models),
    resolves a model's files, type and quantization, and answers its state.

    Must not: know other hosts or gateways (the gateway places across hosts), or load a model in
    its own process (each model runs in a model worker the Supervisor starts).
    """

    def __init__(self, settings: Settings, url: str) -> None:
        self.settings = settings
        self.url = url
        self.host_id = f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
        self.jobs = DownloadJobs(settings.models_dir, max_bytes=settings.max_model_bytes)
        self.gpus = Gpus()
        advertise = settings.host_bind if settings.host_bind not in ("0.0.0.0", "::") else _own_address()
        self.supervisor = Supervisor(settings, advertise=advertise)
        self.keep_alive_s = parse_keep_alive(settings.keep_alive)
        self.keep_alive = KeepAlive(self.supervisor, self.unload, period_s=settings.worker_ping_interval_s)
        self._placing = asyncio.Lock()
        self.sizes = TensorSizes()  # weight files' tensor lists, read once per file version

    def state(self) -> HostState:
        workers = self.supervisor.states()
        budget = self.settings.host_memory_bytes
        devices = room.offered(offered_devices(self.settings.devices, self.gpus), workers, budget)
        for device in devices:
            device.models = [w.model_id for w in workers if w.device == device.name]
        return HostState(
            host_id=self.host_id,
            url=self.url,
            devices=devices,
            models=workers,
            downloads=self.jobs.list(),
            max_loaded_models=self.settings.max_loaded_models,
            loop_late_max_s=round(self.supervisor.clock.worst_s, 3),
        )

    async def load(self, cmd: LoadCommand) -> WorkerState:
        """The model's first worker, once it answers; with `cmd.replicas` > 1 the others load beside it,
        each on a device of its own while there are, then as DUKAT_REPLICAS_PER_DEVICE allows (one
        that finds no room is logged and left out: the model serves with the workers that fit)."""
        # An unknown device is a 400 before any download.
        room.check_device(offered_devices(self.settings.devices, self.gpus), cmd.device or cmd.default_device)
        loads = [self._load_replica(cmd, replica) for replica in range(cmd.replicas)]
        first, *others = await asyncio.gather(*loads, return_exceptions=True)
        for result in [first, *others]:
            if isinstance(result, BaseException) and (result is first or not isinstance(result, DukatError)):
                raise result
        return first  # type: ignore[return-value]

    async def _load_replica(self, cmd: LoadCommand, replica: int) -> WorkerState:
        asked_at = time.time()
        try:
            prepare = partial(self._spec, cmd, replica)
            state = await self.supervisor.load(cmd.model_id, cmd.quantization, cmd.device, prepare, replica)
        except DukatError as exc:
            log.warning(
                "load failed model=%s replica=%d code=%s rid=%s: %s",
                cmd.model_id, replica, exc.code, cmd.request_id, exc.message,
                extra={"model": cmd.model_id, "replica": replica, "request_id": cmd.request_id,
                       "code": exc.code},
            )  # fmt: skip
            raise
        if state.started_at >= asked_at:  # this call started the worker (others joined it)
            log.info(
                "loaded model=%s device=%s quantization=%s seconds=%.1f memory=%d estimate=%d "
                "keep_alive=%s rid=%s",
                cmd.model_id, state.device, state.quantization, state.load_seconds, state.memory_bytes,
                state.estimated_bytes, describe(state.keep_alive_s), cmd.request_id,
                extra={"model": cmd.model_id, "request_id": cmd.request_id, "device": state.device,
                       "replica": replica, "load_seconds": round(state.load_seconds, 2)},
            )  # fmt: skip
        return state

    async def _spec(self, cmd: LoadCommand, replica: int = 0) -> WorkerSpec:
        """What a new worker of `cmd` runs: its files (downloaded first if missing), type, quantization,
        and a device with room for its estimated memory (idle models evicted to make it)."""
        # Disk reads (the GGUF header, weight headers) run in a thread: the loop keeps answering
        # the gateways and pinging the other workers meanwhile.
        path = await asyncio.to_thread(self._local_path, cmd)
        if path is None:
            job = self.jobs.start(cmd.model_id, cmd.revision)
            path = await self.jobs.wait(job.id)
        model_type, quantization, is_default, estimate = await asyncio.to_thread(self._size_up, cmd, path)
        need = estimate.bytes_by_kind
        # One decision at a time: each sees the others' reservations. The supervisor starts the
        # worker (its reservation) right after this returns, without yielding to the loop.
        async with self._placing:
            per_device = self.settings.replicas_per_device
            full = room.full_devices(self.supervisor.states(), cmd.model_id, per_device)
            asked = cmd.device or cmd.default_device
            device, victims = room.choose(self.state(), cmd.model_id, asked, need, full)
            for victim in victims:
                why = f"evicted (least recently used, idle {victim.idle_s:.1f}s) for {cmd.model_id}"
                await self.unload(victim.model_id, why, cmd.request_id, victim.replica)
        return WorkerSpec(
            cmd.model_id,
            str(path),
            model_type.name,
            quantization,
            device,
            replica=replica,
            quantization_is_default=is_default,
            estimated_bytes=need[device_kind(device)],
            keep_alive_s=cmd.keep_alive_s if cmd.keep_alive_s is not None else self.keep_alive_s,
        )

    def _local_path(self, cmd: LoadCommand) -> Path | None:
        """The model's files on this host (its .gguf when the command names one); None: not here."""
        models_dir = self.settings.models_dir
        path = None if cmd.gguf_file else resolve_model_path(cmd.model_id, models_dir)
        return path or local_gguf(cmd.model_id, models_dir, cmd.gguf_file)

    def _type_of(self, model_id: str, override: str | None, path: Path) -> tuple[ModelType, Quantization]:
        """The model's type and the quantization a load that asks for none gets."""
        try:
            model_type = model_type_of(model_id, path, override)
        except (OSError, ValueError):  # no readable config.json: the id (or the override) decides
            model_type = infer_model_type(model_id, override=override)
        default = default_quantization(model_type, self.settings.default_quantization)
        return model_type, default  # type: ignore[return-value]

    def _quantization(self, cmd: LoadCommand, path: Path) -> tuple[ModelType, Quantization, bool]:
        """The model's type, the quantization a load of `cmd` gets (asked, else the config file's, else
        the type's default) and whether it is that default."""
        model_type, default = self._type_of(cmd.model_id, cmd.model_type, path)
        asked = cmd.quantization or cmd.default_quantization
        return model_type, asked or default, asked is None

    def _size_up(self, cmd: LoadCommand, path: Path) -> tuple[ModelType, Quantization, bool, LoadEstimate]:
        """The model's type, quantization (and whether it is the default) and memory estimate.
        Blocking (file reads): called in a thread."""
        model_type, quantization, is_default = self._quantization(cmd, path)
        estimate = room.estimate(path, quantization, self.settings, self.sizes)
        return model_type, quantization, is_default, estimate

    async def estimate(self, cmd: LoadCommand) -> LoadEstimate:
        """What a load of `cmd` would take, before any worker starts (the gateway's placement)."""
        return await asyncio.to_thread(self._estimate, cmd)

    def _estimate(self, cmd: LoadCommand) -> LoadEstimate:
        path = self._local_path(cmd)
        return LoadEstimate() if path is None else self._size_up(cmd, path)[3]

    async def unload(
        self, model_id: str, reason: str, request_id: str = "", replica: int | None = None
    ) -> None:
        """Stop the model's worker `replica`, or (None) every worker of it on this host."""
        workers = [w for w in self.supervisor.replicas_of(model_id) if replica in (None, w.replica)]
        await self.supervisor.unload(model_id, replica)
        device = ",".join(w.device for w in workers) or None
        log.info(
            "unloaded model=%s device=%s reason=%s rid=%s", model_id, device, reason, request_id,
            extra={"model": model_id, "request_id": request_id, "device": device, "reason": reason},
        )  # fmt: skip

    async def delete(self, model_id: str) -> Deleted:
        running = (w for w in self.supervisor.replicas_of(model_id) if w.status in RUNNING_STATUSES)
        if (worker := next(running, None)) is not None:
            raise ConflictError(
                f"model {model_id!r} is {worker.status} on this host; unload it first (dukat stop)",
                param="model",
            )
        if any(j.model_id == model_id and j.status in ("queued", "running") for j in self.jobs.list()):
            raise ConflictError(f"model {model_id!r} is downloading; delete it once that ends", param="model")
        freed = await asyncio.to_thread(model_files.delete, self.settings.models_dir, model_id)
        return Deleted(model_id=model_id, freed_bytes=freed)

    async def local_models(self) -> list[LocalModel]:
        return await asyncio.to_thread(list_local_models, self.settings.models_dir)


def _own_address() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"
