"""POST /v1/completions (raw text or token-id prompts; LangChain's `OpenAI` class and lm-eval use it)."""

from __future__ import annotations

from litestar import Request, post
from litestar.datastructures import State

from gateway.auth import INFERENCE, is_admin
from gateway.choices import generate_all, stream_all
from gateway.intake import bounds
from gateway.limits import (
    check_generations,
    check_model,
    check_prompt_chars,
    check_request_work,
    config_entry,
    keep_alive_for,
)
from gateway.middleware import request_id_of
from gateway.off_loop import EncodedJson, answered
from gateway.route_docs import JSON_BODY, REACHES_A_MODEL, answers
from gateway.schemas import (
    CompletionChunks,
    CompletionRequest,
    CompletionResponse,
    completion_response,
)
from gateway.sse import EventStream, sse_stream
from shared.settings import Settings


@bounds(CompletionRequest)
def completion_bounds(settings: Settings, data: CompletionRequest) -> None:
    prompts = data.prompts()
    check_generations(settings, len(prompts), data.choices)
    check_prompt_chars(settings, (p for p in prompts if isinstance(p, str)), "prompt")
    param = "prompt" if len(prompts) > 1 else "n"
    check_request_work(settings, (len(p) for p in prompts), data.choices, param)


@post(
    "/v1/completions",
    status_code=200,
    opt=INFERENCE | answers(JSON_BODY, REACHES_A_MODEL, chunks=CompletionResponse),
    summary="Create a completion (OpenAI, legacy)",
)
async def completions(
    request: Request, state: State, data: CompletionRequest
) -> CompletionResponse | EventStream | EncodedJson:
    rid = request_id_of(request.scope)
    prompts = data.prompts()
    settings = state.manager.settings
    check_model(state.manager, data.model)
    completion_bounds(settings, data)
    entry = config_entry(state.manager, data.model)
    data.keep_alive = keep_alive_for(settings, data.keep_alive, admin=is_admin(request.scope), entry=entry)
    defaults = state.manager.defaults_for(state.manager.resolve_id(data.model))
    if data.max_tokens is None and defaults is not None and defaults.max_new_tokens is not None:
        data.max_tokens = defaults.max_new_tokens  # the config's default, before OpenAI's 16
    requests = data.generate_requests(rid)
    if data.stream:
        model, events = await stream_all(state.manager, data.model, requests)
        # Text prompts only (token-id echo in a stream is a 400): the first chunk of each choice.
        echo = [p for p in prompts if isinstance(p, str)] if data.echo else None
        chunks = CompletionChunks(
            model=model, request_id=rid, include_usage=data.include_usage, n=data.choices, echo_prompts=echo
        )
        return await sse_stream(chunks.stream(events))
    model, results = await generate_all(state.manager, data.model, requests)
    n = data.choices
    return await answered(results, lambda: completion_response(results, model, rid, n=n))
