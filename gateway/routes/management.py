"""Dukat's management API: pull (a background job), load, unload, default, listing, hosts."""

from __future__ import annotations

from litestar import Request, get, post
from litestar.datastructures import State

from gateway.middleware import request_id_of
from gateway.schemas import (
    DefaultModel,
    DownloadJob,
    DownloadRequest,
    LoadedModel,
    LoadedModelList,
    LoadRequest,
    ModelList,
    SetDefaultRequest,
    Unloaded,
    UnloadRequest,
    download_job,
)
from shared.host_api import HostState


@get("/api/models", summary="Models available: the config file and every host's models_dir")
async def available(state: State) -> ModelList:
    return ModelList(data=await state.manager.available_models())


@get("/api/ps", summary="Models loaded, with device, quantization and memory")
async def loaded(state: State) -> LoadedModelList:
    return LoadedModelList(data=await state.manager.loaded_models())


@get("/api/hosts", summary="Every worker host's devices, models and downloads")
async def hosts(state: State) -> list[HostState]:
    return await state.manager.hosts.states(fresh=True)


@post("/api/models/pull", status_code=202, summary="Start downloading a model (follow the job)")
async def pull(state: State, data: DownloadRequest) -> DownloadJob:
    return download_job(await state.manager.start_download(data.model, data.revision))


@get("/api/downloads/{job_id:str}", summary="A download job's progress")
async def download(state: State, job_id: str) -> DownloadJob:
    return download_job(await state.manager.download_job(job_id))


@post("/api/models/load", status_code=200, summary="Load a model into its own worker process")
async def load(request: Request, state: State, data: LoadRequest) -> LoadedModel:
    rid = request_id_of(request.scope)
    return await state.manager.load_model(
        data.model, data.quantization, data.device, replicas=data.replicas, request_id=rid
    )


@post("/api/models/unload", status_code=200, summary="Stop a model's worker process")
async def unload(state: State, data: UnloadRequest) -> Unloaded:
    await state.manager.unload_model(data.model)
    return Unloaded(id=data.model)


@post("/api/models/default", status_code=200, summary="Set the default model (saved in the config file)")
async def set_default(state: State, data: SetDefaultRequest) -> DefaultModel:
    await state.manager.set_default_model(data.model)
    return DefaultModel(default_model=data.model)


@get("/health", summary="Liveness: the gateway answers")
async def health() -> dict[str, str]:
    return {"status": "ok"}
