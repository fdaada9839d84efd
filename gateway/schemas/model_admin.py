"""`GET /api/models/{id}` (`dukat show`) and `POST /api/models/delete` (`dukat rm`)."""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import Struct

from gateway.schemas.json_schema import names_a_model
from gateway.schemas.models import ModelId
from shared.host_api import ModelDetails
from shared.settings import Settings

# A default parameter's value in the config file (sampling fields: numbers, strings, stop lists).
ParamValue = str | int | float | bool | list[str] | None


class ModelShown(ModelDetails, kw_only=True, rename={"model_id": "id"}):
    """A host's reading of the model's files, with the config file's and the worker's facts."""

    model_id: str
    description: str = ""
    quantization: str
    default_parameters: dict[str, ParamValue] = msgspec.field(default_factory=dict)
    downloaded: bool = False
    state: str = "available"
    device: str | None = None
    default: bool = False


class DeleteRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    model: ModelId

    @classmethod
    def refine_json_schema(cls, schema: dict[str, Any], settings: Settings) -> None:
        names_a_model(schema, settings)


class DeletedModel(Struct, kw_only=True):
    id: str
    deleted: bool = True
    freed_bytes: int = 0
