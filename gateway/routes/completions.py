"""POST /v1/completions (raw text prompts; LangChain's `OpenAI` class uses it)."""

from __future__ import annotations

from litestar import Request, post
from litestar.datastructures import State

from gateway.choices import generate_all, stream_all
from gateway.middleware import request_id_of
from gateway.schemas import (
    CompletionChunks,
    CompletionRequest,
    CompletionResponse,
    completion_response,
    completion_stream,
)
from gateway.schemas.common import keep_alive_seconds
from gateway.sse import EventStream, sse_stream
from shared.generation import GenerateRequest


@post("/v1/completions", status_code=200, summary="Create a completion (OpenAI, legacy)")
async def completions(
    request: Request, state: State, data: CompletionRequest
) -> CompletionResponse | EventStream:
    rid = request_id_of(request.scope)
    prompts, params = data.prompts(), data.choice_params()
    # Prompt-major order, n samples per prompt: choice index = prompt * n + sample.
    keep_alive = keep_alive_seconds(data.keep_alive)
    requests = [
        GenerateRequest(prompt=p, params=s, request_id=rid, keep_alive=keep_alive)
        for p in prompts
        for s in params
    ]
    echo = prompts if data.echo else None
    if data.stream:
        model, events = await stream_all(state.manager, data.model, requests)
        chunks = CompletionChunks(model=model, request_id=rid, include_usage=data.include_usage)
        return await sse_stream(completion_stream(events, chunks, n=data.choices, echo_prompts=echo))
    model, results = await generate_all(state.manager, data.model, requests)
    return completion_response(results, model, rid, n=data.choices, echo_prompts=echo)
