"""Server-Sent Events as the OpenAI API streams them: `data: {json}\\n\\n` events, `data: [DONE]`.

A stream is opened by awaiting its first item, so a failure before anything was sent (unknown
model, full queue) raises in the route and becomes a plain HTTP error. A failure after that sends
one error event, `data: {"error": {...}}`, then `data: [DONE]`: the openai SDK raises `APIError`
with that message when an event's data has an `error` key.

A stream silent for `keepalive_s` (a long prompt, a slow model) gets a `: keep-alive` comment, which
clients ignore and proxies count as traffic. When the server shuts down and its grace period is
over, the streams still open end with an error event and `[DONE]` (`StreamControl.close_all`).

A stream holds at most `buffer_events` items for a client that reads slowly: then it stops taking
them from its source, whose own bound pauses the generation (shared/wire_client.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

import msgspec
from litestar import Request
from litestar.response import Stream

from gateway.errors import log_failure
from shared.errors import DukatError, ErrorBody, ErrorDetail, InternalError, ShuttingDownError

logger = logging.getLogger(__name__)

_encoder = msgspec.json.Encoder()

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"
MEDIA_TYPE = "text/event-stream"
# Proxies (nginx) must pass events through as they come.
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

_INTERNAL_MESSAGE = "The server had an error while streaming the response; the server log has the details."
_NOTHING = object()
_END = object()
_SHUTDOWN = object()


class StreamControl:
    """The app's open streams: their keep-alive period, and the shutdown that ends them."""

    def __init__(self, keepalive_s: float | None = None, buffer_events: int = 256) -> None:
        self.keepalive_s = keepalive_s
        self.buffer_events = buffer_events
        self._queues: set[asyncio.Queue[Any]] = set()
        self.cut: set[asyncio.Queue[Any]] = set()  # full when the shutdown came: ended at their next item

    def close_all(self) -> None:
        """End every open stream (after what it already has) with an error event and [DONE]."""
        for queue in self._queues:
            try:
                queue.put_nowait(_SHUTDOWN)
            except asyncio.QueueFull:
                self.cut.add(queue)

    @contextlib.asynccontextmanager
    async def pumped(self, iterator: AsyncIterator[Any]) -> AsyncIterator[asyncio.Queue[Any]]:
        """The items of `iterator` arriving in a queue (then `_END`, or the exception that ended
        it), so a reader can wait with a timeout without cancelling the source's own await."""
        queue: asyncio.Queue[Any] = asyncio.Queue(self.buffer_events)
        task = asyncio.create_task(_pump(iterator, queue))
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)
            self.cut.discard(queue)
            task.cancel()  # inside the source, the cancel runs its cleanup (the worker's Cancel)
            await asyncio.gather(task, return_exceptions=True)
            await _aclose(iterator)


async def _pump(iterator: AsyncIterator[Any], queue: asyncio.Queue[Any]) -> None:
    try:
        async for item in iterator:
            await queue.put(item)
    except Exception as exc:
        await queue.put(exc)
    else:
        await queue.put(_END)


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


@dataclasses.dataclass(frozen=True)
class Ending:
    """How a stream ends: the event of a failure inside it (given the error), and its last bytes.
    OpenAI's by default; Anthropic's Messages API has its own (gateway/anthropic_errors.py)."""

    failure: Callable[[DukatError], bytes] = lambda exc: error_event(exc.detail())
    done: bytes = DONE


OPENAI_ENDING = Ending()


def _failure_event(exc: Exception, ending: Ending) -> bytes:
    """The error event for a failure inside a started stream; 5xx and bugs logged once here."""
    if isinstance(exc, DukatError):
        log_failure("stream failed", exc)
        return ending.failure(exc)
    logger.error("stream failed with an unexpected error", exc_info=exc)
    return ending.failure(InternalError(_INTERNAL_MESSAGE))


async def _aclose(iterator: AsyncIterator[Any]) -> None:
    # Closing the source lets it cancel its generation when the client goes away.
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


async def _events(
    first: Any, iterator: AsyncIterator[Any], control: StreamControl, ending: Ending
) -> AsyncIterator[bytes]:
    try:
        if first is not _NOTHING:
            yield encode_event(first)
            async with control.pumped(iterator) as queue:
                while True:
                    try:
                        async with asyncio.timeout(control.keepalive_s):
                            item = await queue.get()
                    except TimeoutError:
                        yield KEEPALIVE
                        continue
                    if item is _END:
                        break
                    if item is _SHUTDOWN or queue in control.cut:
                        raise ShuttingDownError("the server is shutting down; retry the request")
                    if isinstance(item, Exception):
                        raise item
                    yield encode_event(item)
    except Exception as exc:
        yield _failure_event(exc, ending)
    finally:
        await _aclose(iterator)
    if ending.done:
        yield ending.done


class _Events:
    """An opened stream's SSE bytes; the response binds it to its app's StreamControl."""

    def __init__(self, first: Any, iterator: AsyncIterator[Any], ending: Ending = OPENAI_ENDING) -> None:
        self.first, self.iterator, self.ending = first, iterator, ending
        self.control = StreamControl()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _events(self.first, self.iterator, self.control, self.ending)


async def open_events(items: AsyncIterable[Any], ending: Ending = OPENAI_ENDING) -> _Events:
    """The SSE bytes of `items`, ending with `[DONE]` (or `ending`'s). Awaits the first item before
    returning, so a failure before it raises here (call this in the route, before building the
    response)."""
    iterator = aiter(items)
    try:
        first = await anext(iterator)
    except StopAsyncIteration:
        first = _NOTHING
    except BaseException:
        await _aclose(iterator)
        raise
    return _Events(first, iterator, ending)


class EventStream(Stream):
    """A `Stream` that stays `text/event-stream`: litestar lets the route's media type (JSON for a
    route annotated `-> SomeStruct | Stream`) override the response's own."""

    def to_asgi_response(self, app: Any, request: Request, **kwargs: Any) -> Any:
        kwargs["media_type"] = MEDIA_TYPE
        control = request.app.state.get("streams")
        if isinstance(self.iterator, _Events) and isinstance(control, StreamControl):
            self.iterator.control = control  # the app's keep-alive period and shutdown
        return super().to_asgi_response(app, request, **kwargs)


async def sse_stream(
    items: AsyncIterable[Any], headers: dict[str, str] | None = None, ending: Ending = OPENAI_ENDING
) -> EventStream:
    """A streaming response of `items` as SSE (see `open_events`); 200 even on a POST route (litestar's
    default there is 201)."""
    body = await open_events(items, ending)
    return EventStream(body, status_code=200, media_type=MEDIA_TYPE, headers={**HEADERS, **(headers or {})})
