"""POST /v1/embeddings."""

from __future__ import annotations

from litestar import post
from litestar.datastructures import State

from gateway.schemas import EmbeddingRequest, EmbeddingResponse, embedding_response
from gateway.schemas.common import keep_alive_seconds


@post("/v1/embeddings", status_code=200, summary="Create embeddings (OpenAI)")
async def embeddings(state: State, data: EmbeddingRequest) -> EmbeddingResponse:
    keep_alive = keep_alive_seconds(data.keep_alive)
    model, result = await state.manager.embed(data.model, data.inputs(), keep_alive)
    return embedding_response(result, model, encoding_format=data.encoding_format, dimensions=data.dimensions)
