"""`/v1/models` (OpenAI's Model objects plus Dukat's fields) and the management API's shapes.

OpenAI's `Model` schema does not forbid extra properties and the openai SDK keeps unknown fields,
so Dukat's own fields ride on the same object. Management requests are Dukat's own wire: they
forbid unknown fields so a typo is a 400, not a silently ignored option.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from shared import host_api
from shared.host_api import DownloadStatus
from shared.settings import Quantization


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
    description: str | None = None
    default: bool = False


class ModelList(Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Model]


class LoadRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    model: str
    quantization: Quantization | None = None
    # "auto", "cpu" or "cuda:N"; None lets placement choose.
    device: str | None = None
    # Workers to serve it, each on another host where there are several; None: the config file's, else 1.
    replicas: Annotated[int, Meta(ge=1, le=64)] | None = None


class UnloadRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    model: str


class DownloadRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    model: str
    revision: str | None = None


class SetDefaultRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    model: str


class DownloadJob(Struct, kw_only=True):
    id: str
    model: str
    status: DownloadStatus
    revision: str | None = None
    downloaded_bytes: int = 0
    total_bytes: int = 0
    files_done: int = 0
    files_total: int = 0
    error: str | None = None
    error_code: str | None = None
    # Where the model lies on its worker host, once done.
    path: str | None = None


def download_job(job: host_api.DownloadJob) -> DownloadJob:
    """A host's download job as the management API shows it."""
    return DownloadJob(
        id=job.id,
        model=job.model_id,
        status=job.status,
        revision=job.revision,
        downloaded_bytes=job.downloaded_bytes,
        total_bytes=job.total_bytes,
        files_done=job.files_done,
        files_total=job.files_total,
        error=job.error,
        error_code=job.error_code,
        path=job.path,
    )
