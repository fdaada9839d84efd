"""`/v1/models` (OpenAI's Model objects plus Dukat's fields) and the management API's shapes.

OpenAI's `Model` schema does not forbid extra properties and the openai SDK keeps unknown fields,
so Dukat's own fields ride on the same object, and `/api/models` lists the same objects. Management
requests are Dukat's own wire: they forbid unknown fields so a typo is a 400, not a silently
ignored option.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from gateway.schemas.json_schema import bound, names_a_model
from shared import host_api
from shared.host_api import WorkerState, WorkerStatus
from shared.model_ids import HUB_ID_PATTERN
from shared.settings import Settings

CREATED = 1_700_000_000  # models have no creation time here; OpenAI requires one


def owner_of(model_id: str) -> str:
    """OpenAI's `owned_by`: the hub organisation of the id, else Dukat."""
    return model_id.split("/")[0] if "/" in model_id else "dukat"

# A default parameter's value in the config file (sampling fields: numbers, strings, stop lists).
ParamValue = str | int | float | bool | list[str] | None


class Model(Struct, kw_only=True):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # Dukat's fields: where the model stands and what it is.
    state: str | None = None  # e.g. "available", "loading", "loaded", "failed"
    device: str | None = None
    quantization: str | None = None
    model_type: str | None = None
    task: str | None = None
    architecture: str | None = None  # transformers' model_type of its files
    description: str | None = None
    default: bool = False
    # From the config file and the hosts' models_dir.
    default_parameters: dict[str, ParamValue] = {}
    downloaded: bool = False
    size_bytes: int = 0
    # vLLM's fields: a LoRA adapter's `parent` is its base model's id (None: a model of its own).
    parent: str | None = None
    root: str | None = None


class ModelList(Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Model]


class AvailableModelList(ModelList, kw_only=True):
    """`/api/models`: the list, and what is wrong with the config file while an edit has broken it
    (the last good config stays in force meanwhile)."""

    config_error: str | None = None


# Ids are checked further where they enter (gateway/limits.py): their length limit is a setting.
ModelId = Annotated[str, Meta(min_length=1)]
Device = Annotated[str, Meta(pattern=r"^(auto|cpu|cuda:[0-9]{1,3})$")]


class LoadedModel(WorkerState, kw_only=True, rename={"model_id": "id", "status": "state"}):
    """A model worker as `/api/ps` and load show it: the host's record, named for the public API."""

    model_id: str
    status: WorkerStatus
    # The worker host it runs on.
    host: str | None = None


class LoadedModelList(Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[LoadedModel]


class Unloaded(host_api.Unloaded, kw_only=True, rename={"model_id": "id", "status": "state"}):
    """The host's answer, named for the public API (msgspec renames the fields a class declares)."""

    model_id: str
    status: Literal["unloaded"] = "unloaded"


class DefaultModel(Struct, kw_only=True):
    default_model: str


class Health(Struct, kw_only=True):
    status: Literal["ok"] = "ok"


# The host's `LoadAsked` (model, quantization, device), named for the public API, and the replicas.
class LoadRequest(host_api.LoadAsked, kw_only=True, rename={"model_id": "model"}):
    model_id: ModelId

    @classmethod
    def refine_json_schema(cls, schema: dict[str, Any], settings: Settings) -> None:
        names_a_model(schema, settings)
    # "auto", "cpu" or "cuda:N"; None lets placement choose.
    device: Device | None = None
    # Workers to serve it, each on another host where there are several; None: the config file's, else 1.
    replicas: Annotated[int, Meta(ge=1, le=64)] | None = None


class UnloadRequest(host_api.UnloadCommand, kw_only=True, rename={"model_id": "model"}):
    """The host's command, named for the public API."""

    model_id: ModelId

    @classmethod
    def refine_json_schema(cls, schema: dict[str, Any], settings: Settings) -> None:
        names_a_model(schema, settings)


class DownloadRequest(host_api.DownloadCommand, kw_only=True, rename={"model_id": "model"}):
    """The host's command (model, revision, one file), named for the public API."""

    model_id: ModelId

    @classmethod
    def refine_json_schema(cls, schema: dict[str, Any], settings: Settings) -> None:
        # A hub id: organisation/name, each at most 96 characters (shared/model_ids.py).
        bound(schema, "model", "string", pattern=HUB_ID_PATTERN, maxLength=193)


class SetDefaultRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    model: ModelId

    @classmethod
    def refine_json_schema(cls, schema: dict[str, Any], settings: Settings) -> None:
        names_a_model(schema, settings)


class DownloadJob(host_api.DownloadJob, kw_only=True, rename={"model_id": "model"}):
    """A host's download job as the management API shows it: `model`, as in the request."""

    model_id: str


def download_job(job: host_api.DownloadJob) -> DownloadJob:
    return DownloadJob(**msgspec.structs.asdict(job))
