"""POST /v1/chat/completions."""

from __future__ import annotations

from litestar import Request, post
from litestar.datastructures import State

from gateway.choices import generate_all, stream_all
from gateway.middleware import request_id_of
from gateway.schemas import (
    ChatChunks,
    ChatCompletionRequest,
    ChatCompletionResponse,
    chat_response,
    chat_stream,
)
from gateway.schemas.common import keep_alive_seconds
from gateway.sse import EventStream, sse_stream
from shared.generation import GenerateRequest


@post("/v1/chat/completions", status_code=200, summary="Create a chat completion (OpenAI)")
async def chat_completions(
    request: Request, state: State, data: ChatCompletionRequest
) -> ChatCompletionResponse | EventStream:
    rid = request_id_of(request.scope)
    keep_alive = keep_alive_seconds(data.keep_alive)
    requests = [
        GenerateRequest(messages=data.messages, params=p, request_id=rid, keep_alive=keep_alive)
        for p in data.choice_params()
    ]
    if data.stream:
        model, events = await stream_all(state.manager, data.model, requests)
        chunks = ChatChunks(model=model, request_id=rid, include_usage=data.include_usage)
        return await sse_stream(chat_stream(events, chunks))
    model, results = await generate_all(state.manager, data.model, requests)
    return chat_response(results, model, rid)
