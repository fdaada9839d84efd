"""POST /v1/rerank, /v2/rerank (Cohere's and Jina's shapes) and /v1/score (vLLM's), on a cross-encoder."""

from __future__ import annotations

from litestar import Request, post
from litestar.datastructures import State

from gateway.auth import INFERENCE
from gateway.intake import bounds
from gateway.limits import check_model, check_pairs
from gateway.middleware import request_id_of
from gateway.route_docs import JSON_BODY, REACHES_A_MODEL, answers
from gateway.schemas.common import keep_alive_seconds
from gateway.schemas.rerank import (
    RerankRequest,
    RerankResponse,
    ScoreResponse,
    ScoreTextsRequest,
    rerank_response,
    score_response,
)
from shared.settings import Settings


@bounds(RerankRequest)
def rerank_pairs(settings: Settings, data: RerankRequest) -> tuple[list[str], list[tuple[str, str]]]:
    texts = data.texts()
    pairs = [(data.query, t) for t in texts]
    check_pairs(settings, pairs, "documents")
    return texts, pairs


@bounds(ScoreTextsRequest)
def score_pairs(settings: Settings, data: ScoreTextsRequest) -> list[tuple[str, str]]:
    pairs = data.pairs()
    check_pairs(settings, pairs, "text_2")
    return pairs


async def _rerank(request: Request, state: State, data: RerankRequest, version: str) -> RerankResponse:
    check_model(state.manager, data.model)
    texts, pairs = rerank_pairs(state.manager.settings, data)
    keep_alive = keep_alive_seconds(data.keep_alive)
    model, result = await state.manager.dispatch.score(data.model, pairs, keep_alive)
    return rerank_response(data, texts, result, model, request_id_of(request.scope), version)


@post(
    "/v1/rerank",
    status_code=200,
    opt=INFERENCE | answers(JSON_BODY, REACHES_A_MODEL),
    summary="Rerank documents (Cohere v1, Jina)",
)
async def rerank_v1(request: Request, state: State, data: RerankRequest) -> RerankResponse:
    return await _rerank(request, state, data, "1")


@post(
    "/v2/rerank",
    status_code=200,
    opt=INFERENCE | answers(JSON_BODY, REACHES_A_MODEL),
    summary="Rerank documents (Cohere v2)",
)
async def rerank_v2(request: Request, state: State, data: RerankRequest) -> RerankResponse:
    return await _rerank(request, state, data, "2")


@post(
    "/v1/score",
    status_code=200,
    opt=INFERENCE | answers(JSON_BODY, REACHES_A_MODEL),
    summary="Score text pairs (vLLM)",
)
async def score(request: Request, state: State, data: ScoreTextsRequest) -> ScoreResponse:
    check_model(state.manager, data.model)
    pairs = score_pairs(state.manager.settings, data)
    keep_alive = keep_alive_seconds(data.keep_alive)
    model, result = await state.manager.dispatch.score(data.model, pairs, keep_alive)
    return score_response(result, model, request_id_of(request.scope))
