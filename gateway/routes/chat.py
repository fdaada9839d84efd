"""POST /v1/chat/completions."""

from __future__ import annotations

from litestar import Request, post
from litestar.datastructures import State

from gateway.auth import INFERENCE, is_admin
from gateway.choices import generate_all, stream_all
from gateway.image_fetch import inline_images
from gateway.intake import bounds
from gateway.limits import (
    check_generations,
    check_messages,
    check_model,
    check_prompt_chars,
    check_request_work,
    config_entry,
    keep_alive_for,
    tools_text,
)
from gateway.middleware import request_id_of
from gateway.off_loop import EncodedJson, answered, prepared
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
from shared.settings import Settings


@bounds(ChatCompletionRequest)
def chat_requests(settings: Settings, data: ChatCompletionRequest, rid: str = "") -> list[GenerateRequest]:
    """The request's generations, within the request limits."""
    check_generations(settings, 1, data.choices)
    check_messages(settings, len(data.messages), "messages")
    requests = data.generate_requests(rid)
    texts = [message_text(m) for m in data.messages] + [tools_text(requests[0].tools)]
    check_prompt_chars(settings, texts, "messages")
    check_request_work(settings, (len(t) for t in texts), data.choices, "n")
    return requests


@post(
    "/v1/chat/completions",
    status_code=200,
    opt=INFERENCE | answers(JSON_BODY, REACHES_A_MODEL, chunks=ChatCompletionChunk),
    summary="Create a chat completion (OpenAI)",
)
async def chat_completions(
    request: Request, state: State, data: ChatCompletionRequest
) -> ChatCompletionResponse | EventStream | EncodedJson:
    rid = request_id_of(request.scope)
    settings = state.manager.settings
    check_model(state.manager, data.model)
    entry = config_entry(state.manager, data.model)
    data.keep_alive = keep_alive_for(settings, data.keep_alive, admin=is_admin(request.scope), entry=entry)
    requests = await prepared(len(data.messages), lambda: chat_requests(settings, data, rid))
    await inline_images(settings, data.messages)
    legacy = data.legacy_functions
    if data.stream:
        model, events = await stream_all(state.manager, data.model, requests)
        chunks = ChatChunks(model=model, request_id=rid, include_usage=data.include_usage, legacy=legacy)
        return await sse_stream(chunks.stream(events))
    model, results = await generate_all(state.manager, data.model, requests)
    return await answered(results, lambda: chat_response(results, model, rid, legacy=legacy))
