"""Server-Sent Events as the OpenAI API streams them: `data: {json}\\n\\n` events, `data: [DONE]`.

A stream is opened by awaiting its first item, so a failure before anything was sent (unknown
model, full queue) raises in the route and becomes a plain HTTP error. A failure after that sends
one error event, `data: {"error": {...}}`, then `data: [DONE]`: the openai SDK raises `APIError`
with that message when an event's data has an `error` key.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import msgspec
from litestar.response import Stream

from shared.errors import DukatError, ErrorBody, ErrorDetail, InternalError

logger = logging.getLogger(__name__)

_encoder = msgspec.json.Encoder()

DONE = b"data: [DONE]\n\n"
MEDIA_TYPE = "text/event-stream"
# Proxies (nginx) must pass events through as they come.
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

_INTERNAL_MESSAGE = "The server had an error while streaming the response; the server log has the details."
_NOTHING = object()


def encode_event(item: Any) -> bytes:
    """One `data:` event holding `item` (a msgspec Struct or builtins) as JSON; a tuple of items is
    several events in one write (chunks that are ready together go out together)."""
    if isinstance(item, tuple):
        return b"".join(encode_event(i) for i in item)
    # A tagged Struct (the Responses API's events) also names its event, as OpenAI does.
    tag = getattr(getattr(type(item), "__struct_config__", None), "tag", None)
    name = b"event: " + tag.encode() + b"\n" if isinstance(tag, str) else b""
    return name + b"data: " + _encoder.encode(item) + b"\n\n"


def error_event(detail: ErrorDetail) -> bytes:
    return encode_event(ErrorBody(error=detail))


def _failure_event(exc: Exception) -> bytes:
    """The error event for a failure inside a started stream; 5xx and bugs logged once here."""
    if isinstance(exc, DukatError):
        if exc.status >= 500:
            logger.error("stream failed: %s", exc.message, exc_info=exc)
        return error_event(exc.detail())
    logger.error("stream failed with an unexpected error", exc_info=exc)
    return error_event(InternalError(_INTERNAL_MESSAGE).detail())


async def _aclose(iterator: AsyncIterator[Any]) -> None:
    # Closing the source lets it cancel its generation when the client goes away.
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


async def _events(first: Any, iterator: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    try:
        if first is not _NOTHING:
            yield encode_event(first)
            async for item in iterator:
                yield encode_event(item)
    except Exception as exc:
        yield _failure_event(exc)
    finally:
        await _aclose(iterator)
    yield DONE


async def open_events(items: AsyncIterable[Any]) -> AsyncIterator[bytes]:
    """The SSE bytes of `items`, ending with `[DONE]`. Awaits the first item before returning, so a
    failure before it raises here (call this in the route, before building the response)."""
    iterator = aiter(items)
    try:
        first = await anext(iterator)
    except StopAsyncIteration:
        first = _NOTHING
    except BaseException:
        await _aclose(iterator)
        raise
    return _events(first, iterator)


class EventStream(Stream):
    """A `Stream` that stays `text/event-stream`: litestar lets the route's media type (JSON for a
    route annotated `-> SomeStruct | Stream`) override the response's own."""

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["media_type"] = MEDIA_TYPE
        return super().to_asgi_response(*args, **kwargs)


async def sse_stream(items: AsyncIterable[Any], headers: dict[str, str] | None = None) -> EventStream:
    """A streaming response of `items` as SSE (see `open_events`); 200 even on a POST route (litestar's
    default there is 201)."""
    body = await open_events(items)
    return EventStream(body, status_code=200, media_type=MEDIA_TYPE, headers={**HEADERS, **(headers or {})})
