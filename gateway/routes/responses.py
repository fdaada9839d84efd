"""POST /v1/responses (OpenAI's Responses API, stateless) and the retrieval Dukat can't offer."""

from __future__ import annotations

from litestar import Request, get, post
from litestar.datastructures import State

from gateway.auth import INFERENCE
from gateway.choices import generate_all, stream_all
from gateway.image_fetch import inline_images
from gateway.intake import bounds
from gateway.limits import check_messages, check_model, check_prompt_chars, tools_text
from gateway.middleware import request_id_of
from gateway.off_loop import EncodedJson, answered, prepared
from gateway.route_docs import JSON_BODY, REACHES_A_MODEL, answers
from gateway.schemas.common import now
from gateway.schemas.response_events import ResponseEvent, response_stream
from gateway.schemas.responses import (
    STATELESS,
    CreateResponseRequest,
    ResponseObject,
    finished,
    output_items,
    response_shell,
)
from gateway.sse import EventStream, sse_stream
from shared.errors import InvalidRequestError
from shared.generation import GenerateRequest, message_text
from shared.settings import Settings


@bounds(CreateResponseRequest)
def response_request(settings: Settings, data: CreateResponseRequest, rid: str = "") -> GenerateRequest:
    """The request's generation, within the request limits."""
    check_messages(settings, _items(data), "input")
    generation = data.generate_request(rid)
    texts = [message_text(m) for m in generation.messages or []] + [tools_text(generation.tools)]
    check_prompt_chars(settings, texts, "input")
    return generation


def _items(data: CreateResponseRequest) -> int:
    return len(data.input) if isinstance(data.input, list) else 1


@post(
    "/v1/responses",
    status_code=200,
    opt=INFERENCE | answers(JSON_BODY, REACHES_A_MODEL, chunks=ResponseEvent),
    summary="Create a model response (OpenAI)",
)
async def create_response(
    request: Request, state: State, data: CreateResponseRequest
) -> ResponseObject | EventStream | EncodedJson:
    rid = request_id_of(request.scope)
    check_model(state.manager, data.model)
    settings = state.manager.settings
    generation = await prepared(_items(data), lambda: response_request(settings, data, rid))
    await inline_images(state.manager.settings, generation.messages or [], "input")
    if data.stream:
        model, events = await stream_all(state.manager, data.model, [generation])
        shell = response_shell(data, model, rid, now(), state.manager.defaults_for(model))
        return await sse_stream(response_stream(events, shell))
    model, (result,) = await generate_all(state.manager, data.model, [generation])
    shell = response_shell(data, model, rid, now(), state.manager.defaults_for(model))
    return await answered([result], lambda: finished(shell, result, output_items(result)))


# Not in the OpenAPI document: it answers every request with the 400 that says why.
@get("/v1/responses/{response_id:str}", opt=INFERENCE, include_in_schema=False)
async def retrieve_response(response_id: str) -> ResponseObject:
    raise InvalidRequestError(
        f"response {response_id!r} was not stored: " + STATELESS.format(what="retrieving a response"),
        param="response_id",
    )
