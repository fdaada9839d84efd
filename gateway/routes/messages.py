"""POST /v1/messages and /v1/messages/count_tokens (Anthropic's Messages API); errors in Anthropic's
shape on both."""

from __future__ import annotations

from litestar import Request, post
from litestar.datastructures import State

from gateway.anthropic_errors import ANTHROPIC_ENDING, AnthropicErrorBody, anthropic_exception_handlers
from gateway.auth import INFERENCE
from gateway.choices import generate_all, stream_all
from gateway.intake import bounds
from gateway.limits import check_messages, check_model, check_prompt_chars, tools_text
from gateway.middleware import request_id_of
from gateway.route_docs import JSON_BODY, REACHES_A_MODEL, answers
from gateway.schemas.message_events import MessageEvent, message_stream
from gateway.schemas.messages import (
    CountTokensRequest,
    MessageObject,
    MessagesRequest,
    MessageUsage,
    TokenCount,
    message_id,
    message_of,
)
from gateway.sse import EventStream, sse_stream
from shared.generation import GenerateRequest, message_text
from shared.settings import Settings


@bounds(MessagesRequest)
def message_request(settings: Settings, data: MessagesRequest, rid: str = "") -> GenerateRequest:
    """The request's generation, within the request limits."""
    check_messages(settings, len(data.messages), "messages")
    generation = data.generate_request(rid)
    _check_texts(settings, generation)
    return generation


@bounds(CountTokensRequest)
def count_request(settings: Settings, data: CountTokensRequest, rid: str = "") -> GenerateRequest:
    check_messages(settings, len(data.messages), "messages")
    generation = data.token_request()
    generation.request_id = rid
    _check_texts(settings, generation)
    return generation


def _check_texts(settings: Settings, generation: GenerateRequest) -> None:
    texts = [message_text(m) for m in generation.messages or []] + [tools_text(generation.tools)]
    check_prompt_chars(settings, texts, "messages")


@post(
    "/v1/messages",
    status_code=200,
    opt=INFERENCE | answers(JSON_BODY, REACHES_A_MODEL, chunks=MessageEvent, error_body=AnthropicErrorBody),
    summary="Create a message (Anthropic)",
    exception_handlers=anthropic_exception_handlers(),
)
async def create_message(
    request: Request, state: State, data: MessagesRequest
) -> MessageObject | EventStream:
    rid = request_id_of(request.scope)
    check_model(state.manager, data.model)
    generation = message_request(state.manager.settings, data, rid)
    if data.stream:
        model, events = await stream_all(state.manager, data.model, [generation])
        usage = MessageUsage(input_tokens=0, output_tokens=0)
        shell = MessageObject(id=message_id(rid), content=[], model=model, usage=usage)
        return await sse_stream(message_stream(events, shell), ending=ANTHROPIC_ENDING)
    model, (result,) = await generate_all(state.manager, data.model, [generation])
    return message_of(result, model, rid)


@post(
    "/v1/messages/count_tokens",
    status_code=200,
    opt=INFERENCE | answers(JSON_BODY, REACHES_A_MODEL, error_body=AnthropicErrorBody),
    summary="Count a message's input tokens (Anthropic)",
    exception_handlers=anthropic_exception_handlers(),
)
async def count_tokens(request: Request, state: State, data: CountTokensRequest) -> TokenCount:
    check_model(state.manager, data.model)
    generation = count_request(state.manager.settings, data, request_id_of(request.scope))
    _, tokens = await state.manager.dispatch.tokenize(data.model, generation)
    return TokenCount(input_tokens=len(tokens.tokens))
