"""POST /v1/embeddings."""

from __future__ import annotations

from litestar import Request, post
from litestar.datastructures import State

from gateway.auth import INFERENCE, is_admin
from gateway.intake import bounds
from gateway.limits import check_embedding_inputs, check_model, config_entry, keep_alive_for
from gateway.route_docs import JSON_BODY, REACHES_A_MODEL, answers
from gateway.schemas import EmbeddingRequest, EmbeddingResponse, embedding_response
from gateway.schemas.common import keep_alive_seconds
from shared.settings import Settings
from shared.token_ids import check_client_ids


@bounds(EmbeddingRequest)
def embedding_inputs(settings: Settings, data: EmbeddingRequest) -> list[str] | list[list[int]]:
    inputs = data.inputs()
    check_embedding_inputs(settings, inputs)
    return inputs


@post(
    "/v1/embeddings",
    status_code=200,
    opt=INFERENCE | answers(JSON_BODY, REACHES_A_MODEL),
    summary="Create embeddings (OpenAI)",
)
async def embeddings(request: Request, state: State, data: EmbeddingRequest) -> EmbeddingResponse:
    check_model(state.manager, data.model)
    inputs = embedding_inputs(state.manager.settings, data)
    check_client_ids(inputs, request.headers.get("user-agent"))
    admin = is_admin(request.scope)
    entry = config_entry(state.manager, data.model)
    kept = keep_alive_for(state.manager.settings, data.keep_alive, admin=admin, entry=entry)
    keep_alive = keep_alive_seconds(kept)
    model, result = await state.manager.dispatch.embed(data.model, inputs, keep_alive)
    return embedding_response(result, model, encoding_format=data.encoding_format, dimensions=data.dimensions)
