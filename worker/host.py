"""The worker host: one per machine (or pod). Supervises model workers on its devices and reports
the truth about what is loaded where. Management API over HTTP + JSON (shared/host_api.py).

Run as `python -m worker.host` (or `dukat host`); `dukat serve` starts one beside the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.handlers.base import BaseRouteHandler
from litestar.params import Parameter

from shared.errors import (
    AuthenticationError,
    ConflictError,
    DeviceUnavailableError,
    DukatError,
    InternalError,
    error_for_status,
)
from shared.host_api import (
    DeleteCommand,
    Deleted,
    DownloadCommand,
    DownloadJob,
    HostState,
    LoadCommand,
    LocalModel,
    ModelDetails,
    UnloadCommand,
    WorkerState,
)
from shared.model_types import default_quantization, infer_model_type
from shared.serving import bind_socket, serve
from shared.settings import Settings, load_settings
from shared.tokens import bearer_token, token_in
from worker import model_files
from worker.catalog import list_local_models, local_gguf
from worker.devices import offered_devices, pick_device
from worker.download_jobs import DownloadJobs
from worker.downloads import resolve_model_path
from worker.gguf import SUFFIX as GGUF_SUFFIX
from worker.gguf import hf_model_type as gguf_model_type
from worker.supervisor import Supervisor, WorkerSpec

log = logging.getLogger(__name__)
READY = "DUKAT_HOST_READY"
HOST_JOB_ID = r"^dl-[0-9a-f]{12}$"


class Host:
    """What the routes call: devices, downloads and the supervisor of one machine."""

    def __init__(self, settings: Settings, url: str) -> None:
        self.settings = settings
        self.url = url
        self.host_id = f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
        self.jobs = DownloadJobs(settings.models_dir, max_bytes=settings.max_model_bytes)
        advertise = settings.host_bind if settings.host_bind not in ("0.0.0.0", "::") else _own_address()
        self.supervisor = Supervisor(
            bind=settings.host_bind,
            advertise=advertise,
            threads=settings.worker_threads,
            max_batch=settings.max_batch,
            max_queue=settings.max_queue,
            stop_timeout_s=settings.stop_timeout_s,
            load_timeout_s=settings.load_timeout_s,
            token=settings.internal_token,
        )

    def state(self) -> HostState:
        devices = offered_devices(self.settings.devices)
        workers = self.supervisor.states()
        for device in devices:
            device.models = [w.model_id for w in workers if w.device == device.name]
        return HostState(
            host_id=self.host_id, url=self.url, devices=devices, models=workers, downloads=self.jobs.list()
        )

    async def load(self, cmd: LoadCommand) -> WorkerState:
        return await self.supervisor.load(cmd.model_id, cmd.quantization, cmd.device, lambda: self._spec(cmd))

    async def _spec(self, cmd: LoadCommand) -> WorkerSpec:
        """What a new worker of `cmd` runs: its device, files (downloaded first if missing), type and
        quantization."""
        devices = offered_devices(self.settings.devices)
        asked = cmd.device or cmd.default_device
        device = pick_device(devices, asked)
        if device is None:
            offered = ", ".join(d.name for d in devices) or "none"
            raise DeviceUnavailableError(
                f"device {asked!r} is not available on this host (offered: {offered})", param="device"
            )
        models_dir = self.settings.models_dir
        path = None if cmd.gguf_file else resolve_model_path(cmd.model_id, models_dir)
        path = path or local_gguf(cmd.model_id, models_dir, cmd.gguf_file)
        if path is None:
            job = self.jobs.start(cmd.model_id, cmd.revision)
            path = await self.jobs.wait(job.id)
        model_type = infer_model_type(
            cmd.model_id, hf_model_type=_hf_model_type(path), override=cmd.model_type
        )
        quantization = cmd.quantization or cmd.default_quantization
        return WorkerSpec(
            cmd.model_id,
            str(path),
            model_type.name,
            quantization or default_quantization(model_type, self.settings.default_quantization),
            device,
            quantization_is_default=quantization is None,
        )

    async def delete(self, model_id: str) -> Deleted:
        worker = self.supervisor.state(model_id)
        if worker is not None and worker.status in ("loading", "loaded", "stopping"):
            raise ConflictError(
                f"model {model_id!r} is {worker.status} on this host; unload it first (dukat stop)",
                param="model",
            )
        if any(j.model_id == model_id and j.status in ("queued", "running") for j in self.jobs.list()):
            raise ConflictError(f"model {model_id!r} is downloading; delete it once that ends", param="model")
        freed = await asyncio.to_thread(model_files.delete, self.settings.models_dir, model_id)
        return Deleted(model_id=model_id, freed_bytes=freed)

    def local_models(self) -> list[LocalModel]:
        return list_local_models(self.settings.models_dir)


def _hf_model_type(path: Path) -> str | None:
    if path.suffix == GGUF_SUFFIX:  # from its header: the worker converts it at load
        return gguf_model_type(path)
    try:
        return json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None


def _own_address() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


@get("/health", opt={"open": True})
async def health() -> dict[str, str]:
    return {"status": "ok"}


@get("/state")
async def host_state(state: State) -> HostState:
    return state.host.state()


@get("/models/local")
async def local_models(state: State) -> list[LocalModel]:
    return state.host.local_models()


@post("/models/load", status_code=200)
async def load(state: State, data: LoadCommand) -> WorkerState:
    return await state.host.load(data)


@post("/models/unload", status_code=200)
async def unload(state: State, data: UnloadCommand) -> dict[str, str]:
    await state.host.supervisor.unload(data.model_id)
    return {"model_id": data.model_id, "status": "unloaded"}


@get("/models/details")
async def model_details(state: State, model_id: str) -> ModelDetails:
    return await asyncio.to_thread(model_files.describe, state.host.settings.models_dir, model_id)


@post("/models/delete", status_code=200)
async def delete_model(state: State, data: DeleteCommand) -> Deleted:
    return await state.host.delete(data.model_id)


@post("/downloads", status_code=202)
async def start_download(state: State, data: DownloadCommand) -> DownloadJob:
    return state.host.jobs.start(data.model_id, data.revision, data.file)


@get("/downloads/{job_id:str}")
async def get_download(state: State, job_id: Annotated[str, Parameter(pattern=HOST_JOB_ID)]) -> DownloadJob:
    return state.host.jobs.get(job_id)


def _error_response(_: Request, exc: Exception) -> Response[bytes]:
    if isinstance(exc, DukatError):
        err = exc
    elif isinstance(exc, HTTPException):
        err = error_for_status(exc.status_code, exc.detail)
    else:
        log.exception("host error", exc_info=exc)
        err = InternalError(f"host error: {type(exc).__name__}")
    return Response(msgspec.json.encode(err.body()), status_code=err.status, media_type="application/json")


def internal_guard(token: str | None) -> Any:
    """A litestar guard: with an internal token set, every route but /health wants it (deny by default)."""
    keys = (token.encode(),) if token else ()

    def guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        if not keys or handler.opt.get("open") is True:
            return
        if not token_in(bearer_token(connection.headers.get("authorization")), keys):
            raise AuthenticationError("this worker host wants the internal token (DUKAT_INTERNAL_TOKEN)")

    return guard


def create_host_app(settings: Settings, url: str) -> Litestar:
    host = Host(settings, url)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await host.supervisor.close()

    return Litestar(
        route_handlers=[
            health, host_state, local_models, load, unload, model_details, delete_model,
            start_download, get_download,
        ],
        state=State({"host": host}),
        lifespan=[lifespan],
        exception_handlers={Exception: _error_response},
        guards=[internal_guard(settings.internal_token)],
        logging_config=None,
        openapi_config=None,
    )


HOST_FLAGS = ("host_bind", "host_port", "models_dir", "devices")


def host_arguments() -> argparse.ArgumentParser:
    """The flags of `dukat host` (a parent parser: `python -m worker.host` and the CLI share it)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--bind", dest="host_bind", help="bind address (DUKAT_HOST_BIND)")
    p.add_argument("--port", dest="host_port", type=int, help="port, 0 for any (DUKAT_HOST_PORT)")
    p.add_argument("--models-dir", dest="models_dir", help="DUKAT_MODELS_DIR")
    p.add_argument("--devices", help="auto, cpu or cuda:N,... (DUKAT_DEVICES)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="dukat host", description="Run a Dukat worker host.", parents=[host_arguments()]
    )
    return run_host(p.parse_args(argv))


def run_host(args: argparse.Namespace) -> int:
    flags = {k: getattr(args, k) for k in HOST_FLAGS if getattr(args, k, None) is not None}
    settings = load_settings(overrides=flags)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    for noisy in ("httpx", "httpx2"):  # one line per hub request would drown the host's own log
        logging.getLogger(noisy).setLevel(logging.WARNING)
    sock = bind_socket(settings.host_bind, settings.host_port)
    port = sock.getsockname()[1]
    app = create_host_app(settings, f"http://{settings.host_bind}:{port}")
    serve(app, sock, ready_prefix=READY, log_level=settings.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
