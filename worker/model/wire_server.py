"""Serves one engine on the framed wire: any number of connections, requests multiplexed by id.

Each connection may start with a Hello (the internal token); a request group is admitted whole or
refused whole (`worker.model.admission`); a Cancel, or the connection's end, stops its generations. On
unload the server drains: it refuses new requests while those in flight finish.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any

from shared.errors import DukatError, InternalError, ModelNotLoadedError, WorkerFailedError
from shared.generation import (
    CallDelta,
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    GenerateResult,
    Reasoning,
    ScoreRequest,
    ScoreResult,
    StreamPiece,
    TextWithLogprobs,
)
from shared.tracing import Tracing, end
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
    Generate,
    Hello,
    Pause,
    Ping,
    Pong,
    Resume,
    Score,
    Scores,
    Text,
    Tokenize,
    Tokens,
    WorkerInfo,
    WorkerLoad,
    encode_frame,
    read_frame,
    result_frames,
    to_worker_decoder,
)
from worker.model.admission import Admission, Ticket
from worker.model.outbox import Outbox

if TYPE_CHECKING:
    from worker.model.engine import Engine

log = logging.getLogger(__name__)


# Before the token: a Hello is a few hundred bytes, and the gateway sends it as soon as it connects.
_HELLO_MAX_BYTES = 4096
_HANDSHAKE_S = 10.0

class WorkerServer:
    """Serves one engine to any number of connections; requests are multiplexed by id."""

    def __init__(
        self,
        engine: Engine,
        info: WorkerInfo,
        *,
        max_pending: int,
        max_wait_s: float = math.inf,
        max_batch: int,
        drain_s: float = 0.0,
        token: str | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.engine = engine
        self.tracing = tracing if tracing is not None and tracing.enabled else None
        self.token = token.encode() if token else None
        self.info = info
        self.places = Admission(
            info.model_id, max_pending=max_pending, max_batch=max_batch, max_wait_s=max_wait_s
        )
        self.finished = 0
        self.cancelled = 0  # finished because the caller went away
        self.drain_s = drain_s
        self.draining = False
        # Usage, reported in every Pong: the host unloads idle workers (keep-alive) and evicts by it.
        self.last_done = time.monotonic()
        self.keep_alive: float | None = None
        # The engine batches internally; threads only carry blocking calls off the loop.
        self.executor = ThreadPoolExecutor(max_workers=max_pending, thread_name_prefix="gen")
        # The engine embeds one batch at a time anyway; queued here, a cancelled one is skipped.
        self.embedder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
        self.outbox: Outbox | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cancels: dict[int, threading.Event] = {}
        pauses: dict[int, threading.Event] = {}  # streams' back-pressure, by request id
        tickets: dict[int, Ticket] = {}  # groups admitted on this connection, by their Admit's id
        tasks: set[asyncio.Task[None]] = set()
        try:
            if self.token is not None and not await self._welcome(reader, writer):
                return
            while (payload := await read_frame(reader)) is not None:
                frame = to_worker_decoder.decode(payload)
                match frame:
                    case Cancel(id=rid):
                        if rid in cancels:
                            cancels[rid].set()
                        if rid in tickets:
                            self.places.give_back(tickets.pop(rid))
                    case Admit(id=rid, count=count):
                        writer.write(encode_frame(self._admit(rid, count, tickets)))
                    case Pause(id=rid):
                        if rid in pauses:
                            pauses[rid].set()
                    case Resume(id=rid):
                        if rid in pauses:
                            pauses[rid].clear()
                            self.engine.wake()
                    case Ping(id=rid):
                        writer.write(encode_frame(Pong(id=rid, info=self.info, load=self.busy_counters())))
                    case Hello():
                        pass
                    case Tokenize() | Detokenize() | AdapterCommand():
                        task = asyncio.create_task(self._answer(frame, writer))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    case Generate() | Embed() | Score():
                        writer.write(encode_frame(Accepted(id=frame.id)))
                        cancels[frame.id] = threading.Event()
                        if isinstance(frame, Generate) and frame.stream:
                            pauses[frame.id] = threading.Event()
                        ticket = _ticket_of(frame, tickets)
                        task = asyncio.create_task(self._serve(frame, ticket, cancels, pauses, writer))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("unreadable frame from the gateway; dropping its connection")
        finally:
            # The gateway went away: nobody will read these results.
            for event in cancels.values():
                event.set()
            for ticket in tickets.values():
                self.places.give_back(ticket)
            writer.close()

    async def _welcome(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """The connection's first frame must be a Hello with the internal token: small, and within
        the handshake deadline (silent, trickling or 64 MiB pre-token connections stayed open, +380 MB)."""
        try:
            payload = await asyncio.wait_for(read_frame(reader, max_size=_HELLO_MAX_BYTES), _HANDSHAKE_S)
        except TimeoutError:
            log.warning("a connection sent no token within %g s; closing it", _HANDSHAKE_S)
            return False
        frame = to_worker_decoder.decode(payload) if payload is not None else None
        given = frame.token.encode() if isinstance(frame, Hello) else b""
        if hmac.compare_digest(given, self.token or b""):
            return True
        log.warning("a connection without the internal token; closing it")
        error = WorkerFailedError("the model worker refused a connection without the internal token")
        writer.write(encode_frame(Error.of(getattr(frame, "id", 0), error)))
        return False

    def _admit(self, rid: int, count: int, tickets: dict[int, Ticket]) -> Admitted | Error:
        try:
            self._refuse_while_draining()
            ticket = tickets[rid] = self.places.admit(count)
        except DukatError as exc:
            return Error.of(rid, exc)
        return Admitted(id=rid, places=ticket.unused)

    def _refuse_while_draining(self) -> None:
        if self.draining:
            raise ModelNotLoadedError(f"model {self.info.model_id!r} is being unloaded", param="model")

    @property
    def pending(self) -> int:
        return self.places.pending

    async def _serve(
        self,
        frame: Generate | Embed | Score,
        ticket: Ticket | None,
        cancels: dict[int, threading.Event],
        pauses: dict[int, threading.Event],
        writer: asyncio.StreamWriter,
    ) -> None:
        rid = frame.id
        try:
            if ticket is None:
                self._refuse_while_draining()  # a group admitted before the unload may finish
            self.places.take(ticket)
            self.keep_alive = frame.request.keep_alive  # Ollama: each request sets it (None: default)
            started = time.monotonic()
            try:
                await self._run(frame, cancels[rid], pauses.get(rid), writer)
            finally:
                self.places.done(time.monotonic() - started, ticket)
                self.finished += 1
                self.cancelled += cancels[rid].is_set()
                self.last_done = time.monotonic()
        except DukatError as exc:
            writer.write(encode_frame(Error.of(rid, exc)))
        except Exception as exc:
            log.exception(
                "request %s (rid=%s) failed", rid, frame.request.request_id,
                extra={"request_id": frame.request.request_id},
            )  # fmt: skip
            writer.write(encode_frame(Error.of(rid, InternalError(f"worker error: {type(exc).__name__}"))))
        finally:
            cancels.pop(rid, None)
            pauses.pop(rid, None)

    async def _answer(
        self, frame: Tokenize | Detokenize | AdapterCommand, writer: asyncio.StreamWriter
    ) -> None:
        """Text <-> token ids, adapters: quick, so outside the generation queue (in a thread: a long
        prompt, an adapter's file)."""
        loop = asyncio.get_running_loop()
        try:
            reply: Tokens | Text | AdaptersLoaded
            if isinstance(frame, AdapterCommand):
                command = partial(self.engine.adapter, frame.adapter, load=frame.load)
                loaded, was = await loop.run_in_executor(self.executor, command)
                reply = AdaptersLoaded(id=frame.id, loaded=loaded, was_loaded=was)
            elif isinstance(frame, Tokenize):
                tokenize = partial(
                    self.engine.tokenize,
                    frame.request,
                    generation_prompt=frame.add_generation_prompt,
                    special_tokens=frame.add_special_tokens,
                )
                ids = await loop.run_in_executor(self.executor, tokenize)
                reply = Tokens(id=frame.id, tokens=ids, max_model_len=self.info.context_length)
            else:
                text = await loop.run_in_executor(self.executor, self.engine.detokenize, frame.tokens)
                reply = Text(id=frame.id, text=text)
        except DukatError as exc:
            writer.write(encode_frame(Error.of(frame.id, exc)))
            return
        except Exception as exc:
            log.exception("request %s (%s) failed", frame.id, type(frame).__name__)
            writer.write(
                encode_frame(Error.of(frame.id, InternalError(f"worker error: {type(exc).__name__}")))
            )
            return
        writer.write(encode_frame(reply))

    def busy_counters(self) -> WorkerLoad:
        idle = 0.0 if self.pending else time.monotonic() - self.last_done
        return WorkerLoad(
            in_flight=self.pending,
            finished=self.finished,
            cancelled=self.cancelled,
            idle_s=idle,
            keep_alive_s=self.keep_alive,
            adapters=self.engine.adapters.loaded() if self.engine.adapters is not None else [],
        )

    async def _run(
        self,
        frame: Generate | Embed | Score,
        cancel: threading.Event,
        pause: threading.Event | None,
        writer: asyncio.StreamWriter,
    ) -> None:
        loop = asyncio.get_running_loop()
        rid = frame.id
        if isinstance(frame, Score):  # one forward pass at a time, on the embeddings' thread
            scored = await loop.run_in_executor(self.embedder, self._score, frame.request, cancel)
            if scored is not None:
                writer.write(encode_frame(Scores(id=rid, result=scored)))
            return
        if isinstance(frame, Embed):
            embedded = await loop.run_in_executor(self.embedder, self._embed, frame.request, cancel)
            if embedded is not None:
                writer.write(encode_frame(Embedding(id=rid, result=embedded)))
            return
        # The scheduler's thread makes the frames; each of its steps hands them all to the loop
        # at once (no thread per stream, no wake-up per token).
        outbox = self._outbox(loop)
        done: asyncio.Future[BaseException | None] = loop.create_future()
        stream = frame.stream
        result: list[GenerateResult] = []
        span = self.tracing.start("generate", frame.request.trace_context) if self.tracing else None

        def on_text(piece: StreamPiece) -> None:
            if stream:
                outbox.add(writer, encode_frame(delta_frame(rid, piece)))

        def on_done(item: GenerateResult | BaseException) -> None:
            if isinstance(item, GenerateResult):
                result.append(item)
                for out in result_frames(rid, item):
                    outbox.add(writer, encode_frame(out))
                outbox.resolve(done, None)
            else:
                outbox.resolve(done, item)

        start = partial(
            self.engine.start,
            frame.request,
            frame.defaults,
            cancel,
            on_text=on_text,
            on_done=on_done,
            on_step=outbox.flush,
            pause=pause,
        )
        failure: BaseException | None = None
        try:
            # Planning (templating, tokenizing a possibly long prompt) stays off the loop.
            await loop.run_in_executor(self.executor, start)
            failure = await done
        except asyncio.CancelledError:  # nobody waits for this reply any more
            cancel.set()
            raise
        except BaseException as exc:
            failure = exc
            raise
        finally:
            if span is not None:
                self._end_span(span, frame.request, result[0] if result else None, failure)
        if failure is not None:
            raise failure

    def _end_span(
        self,
        span: Any,
        request: GenerateRequest,
        result: GenerateResult | None,
        failure: BaseException | None,
    ) -> None:
        timings = result.timings if result is not None else None
        attributes = {
            "gen_ai.request.model": self.info.model_id, "dukat.adapter": request.adapter,
            "dukat.request_id": request.request_id,
            "gen_ai.usage.input_tokens": result.prompt_tokens if result else None,
            "gen_ai.usage.output_tokens": result.completion_tokens if result else None,
            "gen_ai.response.finish_reasons": [result.finish_reason] if result else None,
            "dukat.queue_s": timings.queue_s if timings else None,
            "dukat.first_token_s": timings.first_token_s if timings else None,
        }  # fmt: skip
        end(span, attributes, error=None if failure is None else type(failure).__name__)

    def _embed(self, request: EmbedRequest, cancel: threading.Event) -> EmbedResult | None:
        # Cancelled while it waited for a thread: nobody reads the vectors, don't make them.
        return None if cancel.is_set() else self.engine.embed(request)

    def _score(self, request: ScoreRequest, cancel: threading.Event) -> ScoreResult | None:
        return None if cancel.is_set() else self.engine.score(request)

    def _outbox(self, loop: asyncio.AbstractEventLoop) -> Outbox:
        if self.outbox is None or self.outbox.loop is not loop:
            self.outbox = Outbox(loop)
        return self.outbox


def delta_frame(rid: int, piece: StreamPiece) -> Delta:
    """The wire frame of one streamed piece."""
    match piece:
        case str():
            return Delta(id=rid, text=piece)
        case Reasoning():
            return Delta(id=rid, text=piece.text, reasoning=True)
        case TextWithLogprobs():
            return Delta(id=rid, text=piece.text, logprobs=piece.logprobs)
        case CallDelta():
            return Delta(id=rid, call=piece)
    raise AssertionError(f"unhandled stream piece {piece!r}")


def _ticket_of(frame: Generate | Embed | Score, tickets: dict[int, Ticket]) -> Ticket | None:
    """The group whose held place `frame` takes (None: it needs a free place of its own)."""
    if not isinstance(frame, Generate) or frame.ticket is None:
        return None
    ticket = tickets.get(frame.ticket)
    if ticket is None or ticket.unused <= 0:
        return None
    if ticket.left <= 1:
        del tickets[frame.ticket]  # its last generation: nothing more will name it
    return ticket
