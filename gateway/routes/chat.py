"""POST /v1/chat/completions."""

from __future__ import annotations

from litestar import Request, post
from litestar.datastructures import State

from gateway.auth import INFERENCE, is_admin
from gateway.choices import generate_all, stream_all
from gateway.image_fetch import inline_images
from gateway.limits import (
    check_generations,
    check_model,
    check_prompt_chars,
    check_request_work,
    config_entry,
    keep_alive_for,
    tools_text,
)
from gateway.middleware import request_id_of
from gateway.off_loop import prepared
from gateway.route_docs import JSON_BODY, REACHES_A_MODEL, answers
from gateway.schemas import (
    ChatChunks,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    chat_response,
)
from gateway.sse import EventStream, sse_stream
from shared.generation import GenerateRequest, message_text


@post(
    "/v1/chat/completions",
    status_code=200,
    opt=INFERENCE | answers(JSON_BODY, REACHES_A_MODEL, chunks=ChatCompletionChunk),
    summary="Create a chat completion (OpenAI)",
)
async def chat_completions(
    request: Request, state: State, data: ChatCompletionRequest
) -> ChatCompletionResponse | EventStream:
    rid = request_id_of(request.scope)
    settings = state.manager.settings
    check_model(state.manager, data.model)
    check_generations(settings, 1, data.choices)
    entry = config_entry(state.manager, data.model)
    data.keep_alive = keep_alive_for(settings, data.keep_alive, admin=is_admin(request.scope), entry=entry)

    def prepare() -> list[GenerateRequest]:
        requests = data.generate_requests(rid)
        texts = [message_text(m) for m in data.messages] + [tools_text(requests[0].tools)]
        check_prompt_chars(settings, texts, "messages")
        check_request_work(settings, (len(t) for t in texts), data.choices, "n")
        return requests

    requests = await prepared(len(data.messages), prepare)
    await inline_images(settings, data.messages)
    legacy = data.legacy_functions
    if data.stream:
        model, events = await stream_all(state.manager, data.model, requests)
        chunks = ChatChunks(model=model, request_id=rid, include_usage=data.include_usage, legacy=legacy)
        return await sse_stream(chunks.stream(events))
    model, results = await generate_all(state.manager, data.model, requests)
    return chat_response(results, model, rid, legacy=legacy)
