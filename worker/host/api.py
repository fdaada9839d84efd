"""The worker host: one per machine (or pod). Supervises model workers on its devices and reports
the truth about what is loaded where. This is its management API over HTTP + JSON
(shared/host_api.py) and its entry point; what the routes call is a `Host` (worker/host/service.py).

Run as `python -m worker.host` (or `dukat host`); `dukat serve` starts one beside the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import msgspec
from litestar import Litestar, Request, Response, route
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.handlers.base import BaseRouteHandler
from litestar.params import Parameter

from shared import host_api as api
from shared.bearer_tokens import bearer_token, token_in
from shared.errors import AuthenticationError, DukatError, InternalError, error_for_status
from shared.http_server import bind_socket, serve
from shared.logs import setup_logging
from shared.processes import HOST_READY
from shared.settings import Settings, load_settings
from worker.host import model_files
from worker.host.flags import HOST_FLAGS, host_arguments
from worker.host.service import Host

log = logging.getLogger(__name__)
HOST_JOB_ID = r"^dl-[0-9a-f]{12}$"


def serves(endpoint: api.Endpoint, **options: Any) -> Any:
    """A route handler for one endpoint of shared/host_api.py."""
    return route(endpoint.path, http_method=[endpoint.method], status_code=endpoint.status, **options)


@serves(api.HEALTH, opt={"open": True})
async def health() -> dict[str, str]:
    return {"status": "ok"}


@serves(api.STATE)
async def host_state(state: State) -> api.HostState:
    return state.host.state()


@serves(api.LOCAL_MODELS)
async def local_models(state: State) -> list[api.LocalModel]:
    return await state.host.local_models()


@serves(api.LOAD)
async def load(state: State, data: api.LoadCommand) -> api.WorkerState:
    return await state.host.load(data)


@serves(api.UNLOAD)
async def unload(state: State, data: api.UnloadCommand) -> api.Unloaded:
    await state.host.unload(data.model_id, "asked", data.request_id)
    return api.Unloaded(model_id=data.model_id)


@serves(api.ESTIMATE)
async def estimate(state: State, data: api.LoadCommand) -> api.LoadEstimate:
    return await state.host.estimate(data)


@serves(api.DETAILS)
async def model_details(state: State, model_id: str) -> api.ModelDetails:
    return await asyncio.to_thread(model_files.describe, state.host.settings.models_dir, model_id)


@serves(api.DELETE)
async def delete_model(state: State, data: api.DeleteCommand) -> api.Deleted:
    return await state.host.delete(data.model_id)


@serves(api.START_DOWNLOAD)
async def start_download(state: State, data: api.DownloadCommand) -> api.DownloadJob:
    return state.host.jobs.start(data.model_id, data.revision, data.file)


@serves(api.DOWNLOAD)
async def get_download(
    state: State, job_id: Annotated[str, Parameter(pattern=HOST_JOB_ID)]
) -> api.DownloadJob:
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

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        if not keys or handler.opt.get("open") is True:
            return
        if not token_in(bearer_token(connection.headers.get("authorization")), keys):
            raise AuthenticationError("this worker host wants the internal token (DUKAT_INTERNAL_TOKEN)")

    return guard


def create_host_app(settings: Settings, url: str) -> Litestar:
    host = Host(settings, url)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(host.keep_alive.run()), asyncio.create_task(host.supervisor.clock.run())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await host.supervisor.close()
            host.gpus.close()

    return Litestar(
        route_handlers=[
            health, host_state, local_models, load, unload, estimate, model_details, delete_model,
            start_download, get_download,
        ],
        state=State({"host": host}),
        lifespan=[lifespan],
        exception_handlers={Exception: _error_response},
        guards=[internal_guard(settings.internal_token)],
        logging_config=None,
        openapi_config=None,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="dukat host", description="Run a Dukat worker host.", parents=[host_arguments()]
    )
    return run_host(p.parse_args(argv))


def run_host(args: argparse.Namespace) -> int:
    flags = {k: getattr(args, k) for k in HOST_FLAGS if getattr(args, k, None) is not None}
    settings = load_settings(overrides=flags)
    setup_logging(settings.log_level, settings.log_format, "worker_host")
    sock = bind_socket(settings.host_bind, settings.host_port)
    port = sock.getsockname()[1]
    app = create_host_app(settings, f"http://{settings.host_bind}:{port}")
    serve(
        app, sock, ready_prefix=HOST_READY, log_level=settings.log_level, log_format=settings.log_format
    )
    return 0
