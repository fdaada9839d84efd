"""GET /v1/models and /v1/models/{id}: OpenAI's Model objects with Dukat's state fields."""

from __future__ import annotations

from typing import Any

from litestar import get
from litestar.datastructures import State

from gateway.auth import INFERENCE
from gateway.schemas import Model, ModelList
from shared.errors import ModelNotFoundError

_CREATED = 1_700_000_000  # models have no creation time here; OpenAI requires one


def _model(row: dict[str, Any]) -> Model:
    owner = row["id"].split("/")[0] if "/" in row["id"] else "dukat"
    return Model(
        id=row["id"], created=_CREATED, owned_by=owner, state=row["state"], device=row.get("device"),
        quantization=row.get("quantization"), model_type=row.get("model_type"), task=row.get("task"),
        description=row.get("description"), default=row.get("default", False),
    )


@get("/v1/models", opt=INFERENCE, summary="List models (OpenAI)")
async def list_models(state: State) -> ModelList:
    return ModelList(data=[_model(row) for row in await state.manager.alist_available_models()])


@get("/v1/models/{model_id:path}", opt=INFERENCE, summary="Retrieve a model (OpenAI)")
async def get_model(state: State, model_id: str) -> Model:
    model_id = model_id.lstrip("/")
    for row in await state.manager.alist_available_models():
        if row["id"] == model_id:
            return _model(row)
    raise ModelNotFoundError(f"The model {model_id!r} does not exist", param="model")
