"""Errors in Anthropic's shape, for the Messages API's routes: `{"type": "error", "error": {"type",
"message"}}`, the status kept, the `type` Anthropic's name for it; a failure inside a stream is an
`event: error` with the same body and no `[DONE]` after it.

The app's handlers (gateway/errors.py) decide status, message and headers; these re-render their
answer, so both shapes say the same thing.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response
from litestar.types import ExceptionHandler, ExceptionHandlersMap

from gateway.errors import exception_handlers
from gateway.sse import Ending, encode_event
from shared.errors import ErrorBody

_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}
_encoder = msgspec.json.Encoder()
_openai_body = msgspec.json.Decoder(ErrorBody)


class AnthropicErrorDetail(msgspec.Struct, kw_only=True):
    type: str
    message: str


class AnthropicErrorBody(msgspec.Struct, kw_only=True, tag="error", tag_field="type"):
    error: AnthropicErrorDetail


def anthropic_type(status: int) -> str:
    return _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def anthropic_body(status: int, message: str) -> AnthropicErrorBody:
    return AnthropicErrorBody(error=AnthropicErrorDetail(type=anthropic_type(status), message=message))


def _reshaped(handler: Any) -> ExceptionHandler:
    def handle(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
        answer: Response[bytes] = handler(request, exc)
        detail = _openai_body.decode(answer.content).error
        return Response(
            content=_encoder.encode(anthropic_body(answer.status_code or 500, detail.message)),
            status_code=answer.status_code,
            media_type="application/json",
            headers=dict(answer.headers),
        )

    return handle


def anthropic_exception_handlers() -> ExceptionHandlersMap:
    """For a route handler's `exception_handlers=`: the app's, answering in Anthropic's shape."""
    return {cls: _reshaped(handler) for cls, handler in exception_handlers().items()}


# A stream's failure: `event: error` (the body is a tagged Struct, so it names its event).
ANTHROPIC_ENDING = Ending(failure=lambda exc: encode_event(anthropic_body(exc.status, exc.message)), done=b"")
