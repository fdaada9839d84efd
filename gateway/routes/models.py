"""GET /v1/models and /v1/models/{id}: OpenAI's Model objects with Dukat's state fields."""

from __future__ import annotations

from litestar import get
from litestar.datastructures import State

from gateway.auth import INFERENCE
from gateway.route_docs import answers
from gateway.schemas.models import Model, ModelList
from shared.errors import ModelNotFoundError


@get("/v1/models", opt=INFERENCE | answers(), summary="List models (OpenAI)")
async def list_models(state: State) -> ModelList:
    return ModelList(data=await state.manager.available_models())


@get("/v1/models/{model_id:path}", opt=INFERENCE | answers(404), summary="Retrieve a model (OpenAI)")
async def get_model(state: State, model_id: str) -> Model:
    model_id = model_id.lstrip("/")
    for model in await state.manager.available_models():
        if model.id == model_id:
            return model
    raise ModelNotFoundError(f"The model {model_id!r} does not exist", param="model")
