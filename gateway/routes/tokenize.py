"""POST /tokenize and /detokenize (vLLM's), open to inference keys."""

from __future__ import annotations

from litestar import Request, post
from litestar.datastructures import State

from gateway.auth import INFERENCE
from gateway.image_fetch import inline_images
from gateway.intake import bounds
from gateway.limits import check_messages, check_model, check_prompt_chars, check_token_count, tools_text
from gateway.middleware import request_id_of
from gateway.route_docs import JSON_BODY, REACHES_A_MODEL, answers
from gateway.schemas.tokenize import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from shared.generation import GenerateRequest, message_text
from shared.settings import Settings


@bounds(TokenizeRequest)
def tokenize_request(settings: Settings, data: TokenizeRequest, rid: str = "") -> GenerateRequest:
    check_messages(settings, len(data.messages or []), "messages")
    generation = data.generate_request(rid)
    texts = [message_text(m) for m in data.messages or []] + [data.prompt or "", tools_text(generation.tools)]
    check_prompt_chars(settings, texts, "messages" if data.messages else "prompt")
    return generation


@bounds(DetokenizeRequest)
def detokenize_bounds(settings: Settings, data: DetokenizeRequest) -> None:
    check_token_count(settings, data.tokens, "tokens")


@post(
    "/tokenize",
    status_code=200,
    opt=INFERENCE | answers(JSON_BODY, REACHES_A_MODEL),
    summary="Tokenize a prompt or messages (vLLM)",
)
async def tokenize(request: Request, state: State, data: TokenizeRequest) -> TokenizeResponse:
    check_model(state.manager, data.model)
    generation = tokenize_request(state.manager.settings, data, request_id_of(request.scope))
    await inline_images(state.manager.settings, generation.messages or [])
    _, found = await state.manager.dispatch.tokenize(
        data.model,
        generation,
        add_generation_prompt=data.add_generation_prompt,
        add_special_tokens=data.add_special_tokens,
    )
    return TokenizeResponse(count=len(found.tokens), max_model_len=found.max_model_len, tokens=found.tokens)


@post(
    "/detokenize",
    status_code=200,
    opt=INFERENCE | answers(JSON_BODY, REACHES_A_MODEL),
    summary="Turn token ids into text (vLLM)",
)
async def detokenize(state: State, data: DetokenizeRequest) -> DetokenizeResponse:
    check_model(state.manager, data.model)
    detokenize_bounds(state.manager.settings, data)
    _, text = await state.manager.dispatch.detokenize(data.model, data.tokens)
    return DetokenizeResponse(prompt=text)
