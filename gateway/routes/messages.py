"""POST /v1/messages and /v1/messages/count_tokens (Anthropic's Messages API); errors in Anthropic's
shape on both."""

from __future__ import annotations

from litestar import Request, post
from litestar.datastructures import State

from gateway.anthropic_errors import ANTHROPIC_ENDING, AnthropicErrorBody, anthropic_exception_handlers
from gateway.auth import INFERENCE
from gateway.choices import generate_all, stream_all
from gateway.limits import check_model, check_prompt_chars, tools_text
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


def _checked(state: State, data: CountTokensRequest, generation: GenerateRequest) -> None:
    check_model(state.manager, data.model)
    texts = [message_text(m) for m in generation.messages or []] + [tools_text(generation.tools)]
    check_prompt_chars(state.manager.settings, texts, "messages")


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
    generation = data.generate_request(rid)
    _checked(state, data, generation)
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
    generation = data.token_request()
    generation.request_id = request_id_of(request.scope)
    _checked(state, data, generation)
    _, tokens = await state.manager.dispatch.tokenize(data.model, generation)
    return TokenCount(input_tokens=len(tokens.tokens))
