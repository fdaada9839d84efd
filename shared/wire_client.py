"""The client side of the model worker wire: one multiplexed connection per worker address.

Requests are matched to replies by id; a lost connection fails every request in flight with
`WorkerFailedError`, and the next request reconnects. Deadlines bound every request whatever the
worker does (hung, stopped): the whole request, and a stream's first token; past one the request
is a 504 and the worker is told to cancel it.

Back-pressure: a stream whose reader (its client) is behind by `stream_buffer_events` frames is
paused on the worker (its row stops generating) until the reader has taken half of them; paused for
`stream_stall_timeout_s`, it is cancelled and ends with a `stream_stalled` error.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator
from typing import Protocol, TypeVar

from shared.errors import (
    InvalidRequestError,
    OverloadedError,
    RequestTimeoutError,
    StreamStalledError,
    WorkerFailedError,
    WorkerUnreachableError,
)
from shared.generation import (
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    GenerateResult,
    Reasoning,
    SamplingParams,
    ScoreRequest,
    ScoreResult,
    StreamItem,
    StreamPiece,
    TextWithLogprobs,
    TokenLogprob,
)
from shared.wire import (
    Accepted,
    AdapterCommand,
    AdaptersLoaded,
    Admit,
    Admitted,
    Cancel,
    Delta,
    Detokenize,
    Embed,
    Embedding,
    Error,
    FromWorker,
    Generate,
    Hello,
    Logprobs,
    Pause,
    Ping,
    Pong,
    Result,
    Resume,
    Score,
    Scores,
    Text,
    Tokenize,
    Tokens,
    ToWorker,
    WorkerInfo,
    encode_frame,
    from_worker_decoder,
    read_frame,
)

log = logging.getLogger(__name__)
_CLOSED = object()
# A Logprobs slice with 20 alternatives a token is ~25 KB.
_LARGE_FRAME = 16 * 1024
_Reply = TypeVar("_Reply", Pong, Result, Embedding, Tokens, Text, Scores, AdaptersLoaded)


class RequestObserver(Protocol):
    """Told about each request as it ends (the gateway's metrics); must be quick and not raise."""

    def finished(self, result: GenerateResult, elapsed_s: float, first_token_s: float | None) -> None: ...
    def embedded(self, prompt_tokens: int, elapsed_s: float) -> None: ...
    def rejected(self) -> None: ...


class WorkerConnection:
    def __init__(
        self,
        address: str,
        token: str | None = None,
        *,
        request_timeout_s: float | None = None,
        first_token_timeout_s: float | None = None,
        observer: RequestObserver | None = None,
        stream_buffer_events: int = 256,
        stream_stall_timeout_s: float = 60.0,
    ) -> None:
        self.address = address
        self.stream_buffer_events = stream_buffer_events
        self.stream_stall_timeout_s = stream_stall_timeout_s
        self._paused: dict[int, asyncio.TimerHandle] = {}  # streams paused, with their stall timers
        self.token = token
        self.request_timeout_s = request_timeout_s
        self.first_token_timeout_s = first_token_timeout_s
        self.observer = observer
        self._ids = itertools.count(1)
        self._queues: dict[int, asyncio.Queue[FromWorker | object]] = {}
        self._accepted: set[int] = set()  # requests the worker said it has
        # Logprobs slices of a finished generation whose Result has not come yet: (output, prompt).
        self._slices: dict[int, tuple[list[TokenLogprob], list[TokenLogprob]]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()

    async def _connect(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            host, _, port = self.address.rpartition(":")
            try:
                reader, writer = await asyncio.open_connection(host, int(port))
            except OSError as exc:
                raise WorkerUnreachableError(f"cannot reach model worker at {self.address}: {exc}") from None
            if self.token:
                writer.write(encode_frame(Hello(token=self.token)))
            self._writer = writer
            self._reader_task = asyncio.create_task(self._read(reader))
            return writer

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while (payload := await read_frame(reader)) is not None:
                frame = from_worker_decoder.decode(payload)
                if isinstance(frame, Accepted):
                    if frame.id in self._queues:
                        self._accepted.add(frame.id)
                    continue
                if isinstance(frame, Logprobs):
                    if frame.id in self._queues:
                        self._slices.setdefault(frame.id, ([], []))[frame.prompt].extend(frame.logprobs)
                else:
                    self._deliver(frame)
                if len(payload) >= _LARGE_FRAME:
                    # Buffered frames are read without a pause: after a large one (a slice of logprobs,
                    # an embedding), other requests get the loop before the next is decoded.
                    await asyncio.sleep(0)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("unreadable frame from the worker at %s; dropping the connection", self.address)
        finally:
            self._writer = None
            for queue in self._queues.values():
                queue.put_nowait(_CLOSED)

    def _deliver(self, frame: FromWorker) -> None:
        """A frame to its request's queue (a result with its logprobs joined), pausing a stream
        whose consumer fell behind."""
        if isinstance(frame, Result) and (slices := self._slices.pop(frame.id, None)):
            _join_slices(frame.result, *slices)
        queue = self._queues.get(frame.id)
        if queue is not None:
            queue.put_nowait(frame)
            if queue.qsize() >= self.stream_buffer_events and frame.id not in self._paused:
                self._pause(frame.id)

    async def _send(self, frame: ToWorker) -> None:
        try:
            data = encode_frame(frame)
        except OverflowError:  # msgpack's integers stop at 64 bits; JSON's don't
            raise InvalidRequestError(
                "the request holds an integer beyond 64 bits (in a tool call's arguments or a tool's "
                "schema?), which Dukat cannot pass to the model; send it as a string"
            ) from None
        writer = await self._connect()
        writer.write(data)

    async def _request(
        self,
        make: type[Generate | Embed | Ping | Admit | Tokenize | Detokenize | Score | AdapterCommand],
        **kw: object,
    ) -> tuple[int, asyncio.Queue]:
        rid = next(self._ids)
        queue: asyncio.Queue[FromWorker | object] = asyncio.Queue()
        self._queues[rid] = queue
        try:
            await self._send(make(id=rid, **kw))  # type: ignore[arg-type]
        except BaseException:
            self._forget(rid)
            raise
        return rid, queue

    @property
    def in_flight(self) -> int:
        """Requests sent on this connection and not answered yet."""
        return len(self._queues)

    def _forget(self, rid: int) -> None:
        self._queues.pop(rid, None)
        self._accepted.discard(rid)
        self._slices.pop(rid, None)
        if (stall := self._paused.pop(rid, None)) is not None:
            stall.cancel()

    def _write(self, frame: ToWorker) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(encode_frame(frame))

    def _pause(self, rid: int) -> None:
        """The stream's reader is behind: its row stops until `_caught_up`, or is cancelled."""
        loop = asyncio.get_running_loop()
        self._paused[rid] = loop.call_later(self.stream_stall_timeout_s, self._stalled, rid)
        self._write(Pause(id=rid))

    def _caught_up(self, rid: int, queue: asyncio.Queue[FromWorker | object]) -> None:
        if rid in self._paused and queue.qsize() <= self.stream_buffer_events // 2:
            self._paused.pop(rid).cancel()
            self._write(Resume(id=rid))

    def _stalled(self, rid: int) -> None:
        """Paused for the stall timeout: the worker cancels it; its reader, if it ever reads on,
        gets what was made, then the error."""
        self._paused.pop(rid, None)
        if (queue := self._queues.get(rid)) is None:
            return
        self._write(Cancel(id=rid))
        seconds = self.stream_stall_timeout_s
        stalled = StreamStalledError(f"the stream was cancelled: its client read nothing for {seconds:g} s")
        queue.put_nowait(Error.of(rid, stalled))

    def _deadline(self, timeout: float | None) -> float | None:
        return None if timeout is None else asyncio.get_running_loop().time() + timeout

    async def _next(
        self, rid: int, queue: asyncio.Queue[FromWorker | object], deadline: float | None = None
    ) -> FromWorker:
        try:
            async with asyncio.timeout_at(deadline):
                frame = await queue.get()
        except TimeoutError:
            raise RequestTimeoutError(f"model worker at {self.address} did not answer in time") from None
        if frame is _CLOSED:
            if rid not in self._accepted:
                raise WorkerUnreachableError(f"model worker at {self.address} closed the connection")
            raise WorkerFailedError(f"model worker at {self.address} closed the connection")
        if isinstance(frame, Error):
            if frame.code == OverloadedError.code and self.observer is not None:
                self.observer.rejected()
            raise frame.exception()
        return frame  # type: ignore[return-value]

    async def _call(
        self,
        reply: type[_Reply],
        deadline: float | None,
        make: type[Generate | Embed | Ping | Tokenize | Detokenize | Score | AdapterCommand],
        **kw: object,
    ) -> _Reply:
        """Send one request and wait for its one reply; a caller that goes away first (a deadline, a
        client that disconnected) has the worker cancel it."""
        rid, queue = await self._request(make, **kw)
        done = False
        try:
            frame = await self._next(rid, queue, deadline)
            done = True
            assert isinstance(frame, reply)
            return frame
        finally:
            await self._finish(rid, done)

    async def pong(self) -> Pong:
        """The worker's answer to a ping: its facts and its counters."""
        return await self._call(Pong, None, Ping)

    async def admit(self, count: int) -> tuple[int, int]:
        """Admit `count` generations of one request together, or none (OverloadedError, with the
        worker's Retry-After). Returns the ticket each of them passes and how many may run at once;
        `release` the ticket after."""
        rid, queue = await self._request(Admit, count=count)
        try:
            frame = await self._next(rid, queue, self._deadline(self.first_token_timeout_s))
            assert isinstance(frame, Admitted)
            return rid, frame.places
        finally:
            self._forget(rid)

    def release(self, ticket: int) -> None:
        """Give back the places of `ticket` its generations did not take."""
        self._write(Cancel(id=ticket))

    async def ping(self) -> WorkerInfo:
        return (await self.pong()).info

    async def generate(
        self, request: GenerateRequest, defaults: SamplingParams | None = None, ticket: int | None = None
    ) -> GenerateResult:
        deadline = self._deadline(self.request_timeout_s)
        started = time.perf_counter()
        frame = await self._call(
            Result, deadline, Generate, request=request, defaults=defaults, stream=False, ticket=ticket
        )
        if self.observer is not None:
            self.observer.finished(frame.result, time.perf_counter() - started, None)
        return frame.result

    async def stream(
        self, request: GenerateRequest, defaults: SamplingParams | None = None, ticket: int | None = None
    ) -> AsyncIterator[StreamItem]:
        """Text deltas (and tool-call pieces), then the final result. Closing the iterator early
        cancels the generation."""
        deadline = self._deadline(self.request_timeout_s)
        first = self._deadline(self.first_token_timeout_s)
        started = time.perf_counter()
        first_token_s: float | None = None
        rid, queue = await self._request(
            Generate, request=request, defaults=defaults, stream=True, ticket=ticket
        )
        done = False
        try:
            while True:
                frame = await self._next(rid, queue, _earliest(deadline, first))
                first = None
                self._caught_up(rid, queue)
                if isinstance(frame, Delta):
                    if first_token_s is None:
                        first_token_s = time.perf_counter() - started
                    yield piece_of(frame)
                elif isinstance(frame, Result):
                    done = True
                    if self.observer is not None:
                        elapsed = time.perf_counter() - started
                        ttft = first_token_s if first_token_s is not None else elapsed
                        self.observer.finished(frame.result, elapsed, ttft)
                    yield frame.result
                    return
        except WorkerFailedError:
            done = True
            raise
        finally:
            await self._finish(rid, done)

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        deadline = self._deadline(self.request_timeout_s)
        started = time.perf_counter()
        frame = await self._call(Embedding, deadline, Embed, request=request)
        if self.observer is not None:
            self.observer.embedded(frame.result.prompt_tokens, time.perf_counter() - started)
        return frame.result

    async def score(self, request: ScoreRequest) -> ScoreResult:
        deadline = self._deadline(self.request_timeout_s)
        started = time.perf_counter()
        frame = await self._call(Scores, deadline, Score, request=request)
        if self.observer is not None:  # counted as the embeddings are: tokens in, latency
            self.observer.embedded(frame.result.prompt_tokens, time.perf_counter() - started)
        return frame.result

    async def tokenize(
        self,
        request: GenerateRequest,
        *,
        add_generation_prompt: bool = True,
        add_special_tokens: bool | None = None,
    ) -> Tokens:
        """`request`'s prompt as the model's token ids (see `Tokenize`), and its context length."""
        deadline = self._deadline(self.request_timeout_s)
        return await self._call(
            Tokens,
            deadline,
            Tokenize,
            request=request,
            add_generation_prompt=add_generation_prompt,
            add_special_tokens=add_special_tokens,
        )

    async def detokenize(self, tokens: list[int]) -> str:
        deadline = self._deadline(self.request_timeout_s)
        return (await self._call(Text, deadline, Detokenize, tokens=tokens)).text

    async def adapter(self, adapter: str, *, load: bool) -> AdaptersLoaded:
        """Load (or unload) a LoRA adapter on the worker; the adapters it then has loaded."""
        deadline = self._deadline(self.request_timeout_s)
        return await self._call(AdaptersLoaded, deadline, AdapterCommand, adapter=adapter, load=load)

    async def _finish(self, rid: int, done: bool) -> None:
        self._forget(rid)
        if not done and self._writer is not None:
            # The caller went away (client disconnect, timeout): stop the generation.
            with contextlib.suppress(Exception):
                self._writer.write(encode_frame(Cancel(id=rid)))

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(BaseException):
                await self._reader_task


def _earliest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def piece_of(frame: Delta) -> StreamPiece:
    """What a streamed frame carries: text, thinking, text with its logprobs, or a tool call's piece."""
    if frame.call is not None:
        return frame.call
    if frame.reasoning:
        return Reasoning(text=frame.text)
    if frame.logprobs is not None:
        return TextWithLogprobs(text=frame.text, logprobs=frame.logprobs)
    return frame.text


def _join_slices(result: GenerateResult, output: list[TokenLogprob], prompt: list[TokenLogprob]) -> None:
    """A result's logprobs as their slices came (`shared.wire.result_frames`)."""
    if result.logprobs is not None:
        result.logprobs = output
    if result.prompt_logprobs is not None:
        result.prompt_logprobs = prompt
