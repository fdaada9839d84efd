"""Dukat's management API: pull (a background job), load, unload, default, listing, hosts.

Listings are open to inference keys (without pids, addresses and logs); every route that changes
state, and /api/hosts, needs an admin key (gateway/auth.py).
"""

from __future__ import annotations

from typing import Annotated

from litestar import Request, get, post
from litestar.datastructures import State
from litestar.params import Parameter

from gateway.auth import INFERENCE, is_admin, without_internals
from gateway.limits import check_loadable, check_model, check_pull, check_revision
from gateway.middleware import request_id_of
from gateway.route_docs import JSON_BODY, answers
from gateway.schemas.models import (
    AvailableModelList,
    DefaultModel,
    DownloadJob,
    DownloadRequest,
    Health,
    LoadedModel,
    LoadedModelList,
    LoadRequest,
    SetDefaultRequest,
    Unloaded,
    UnloadRequest,
    download_job,
)
from shared.host_api import JOB_ID_PATTERN, HostState


@get(
    "/api/models",
    opt=INFERENCE | answers(),
    summary="Models available: the config file and every host's models_dir",
)
async def available(state: State) -> AvailableModelList:
    models = await state.manager.available_models()
    return AvailableModelList(data=models, config_error=state.manager.config.problem)


@get("/api/ps", opt=INFERENCE | answers(), summary="Models loaded, with device, quantization and memory")
async def loaded(request: Request, state: State) -> LoadedModelList:
    rows = await state.manager.loaded_models()
    if not is_admin(request.scope):
        rows = [without_internals(row, state.manager.settings.models_dir) for row in rows]
    return LoadedModelList(data=rows)


@get("/api/hosts", opt=answers(), summary="Every worker host's devices, models and downloads")
async def hosts(state: State) -> list[HostState]:
    return await state.manager.hosts.states(fresh=True)


@post(
    "/api/models/pull",
    status_code=202,
    opt=answers(JSON_BODY, 403, 502, 503),
    summary="Start downloading a model (follow the job)",
)
async def pull(state: State, data: DownloadRequest) -> DownloadJob:
    check_pull(state.manager.settings, data.model_id)
    check_revision(data.revision)
    return download_job(await state.manager.start_download(data.model_id, data.revision, data.file))


@get("/api/downloads/{job_id:str}", opt=answers(400, 404, 502), summary="A download job's progress")
async def download(state: State, job_id: Annotated[str, Parameter(pattern=JOB_ID_PATTERN)]) -> DownloadJob:
    return download_job(await state.manager.download_job(job_id))


@post(
    "/api/models/load",
    status_code=200,
    opt=answers(JSON_BODY, 403, 404, 409, 502, 503, 504, 507),
    summary="Load a model into its own worker process",
)
async def load(request: Request, state: State, data: LoadRequest) -> LoadedModel:
    await check_loadable(state.manager, data.model_id)
    rid = request_id_of(request.scope)
    return await state.manager.load_model(
        data.model_id, data.quantization, data.device, replicas=data.replicas, request_id=rid
    )


@post(
    "/api/models/unload",
    status_code=200,
    opt=answers(JSON_BODY, 404, 502),
    summary="Stop a model's worker process",
)
async def unload(state: State, data: UnloadRequest) -> Unloaded:
    check_model(state.manager, data.model_id)
    await state.manager.unload_model(data.model_id)
    return Unloaded(model_id=data.model_id)


@post(
    "/api/models/default",
    status_code=200,
    opt=answers(JSON_BODY, 404),
    summary="Set the default model (saved in the config file)",
)
async def set_default(state: State, data: SetDefaultRequest) -> DefaultModel:
    check_model(state.manager, data.model)
    await state.manager.set_default_model(data.model)
    return DefaultModel(default_model=data.model)


@get("/health", opt=answers(), summary="Liveness: the gateway answers")
async def health() -> Health:
    return Health()
