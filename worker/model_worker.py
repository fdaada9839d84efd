"""The model worker process: one loaded model, pinned to one device, serving the framed wire.

Started by the worker host as `python -m worker.model_worker ...`. The device is pinned through
`CUDA_VISIBLE_DEVICES` before torch is imported, so `cuda:N` is the only GPU this process sees.
Handshake on stdout (one line): `DUKAT_WORKER_READY <port>` or `DUKAT_WORKER_FAILED <json error>`;
logs go to stderr, which the host keeps the tail of.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any

import msgspec

from shared.errors import (
    DukatError,
    InternalError,
    ModelNotLoadedError,
    ModelOutOfMemoryError,
    QuantizationError,
    WorkerFailedError,
)
from shared.generation import EmbedRequest, EmbedResult, GenerateResult
from shared.logs import setup_logging
from shared.processes import WORKER_FAILED, WORKER_READY, announce_ready
from shared.settings import QUANTIZATIONS, Settings, load_settings
from shared.wire import (
    Accepted,
    Admit,
    Admitted,
    Cancel,
    Delta,
    Embed,
    Embedding,
    Error,
    Generate,
    Hello,
    Ping,
    Pong,
    Result,
    WorkerInfo,
    WorkerLoad,
    encode_frame,
    read_frame,
    to_worker_decoder,
)
from worker.admission import Admission, Ticket
from worker.devices import pinned_env
from worker.outbox import Outbox

if TYPE_CHECKING:
    from worker.engine import Engine

log = logging.getLogger("worker.model_worker")
DEFAULTS = Settings()  # the registry's defaults; the host passes each value it set


def die_with_parent() -> None:
    """Ask Linux to SIGTERM us when the host dies, even by SIGKILL: no orphaned GPU memory."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def pin_device(device: str, threads: int) -> str:
    """Make `device` the only one this process sees; returns the device name inside the process.

    Must run before torch is imported: CUDA reads CUDA_VISIBLE_DEVICES once, at initialisation.
    """
    os.environ.update(pinned_env(device, threads))  # the host sets these too; a worker run by hand needs them
    return "cuda:0" if device.startswith("cuda") else "cpu"


class WorkerServer:
    """Serves one engine to any number of connections; requests are multiplexed by id."""

    def __init__(
        self,
        engine: Engine,
        info: WorkerInfo,
        *,
        max_pending: int,
        max_batch: int,
        drain_s: float = 0.0,
        token: str | None = None,
    ) -> None:
        self.engine = engine
        self.token = token.encode() if token else None
        self.info = info
        self.places = Admission(info.model_id, max_pending=max_pending, max_batch=max_batch)
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
                    case Ping(id=rid):
                        writer.write(encode_frame(Pong(id=rid, info=self.info, load=self.load())))
                    case Hello():
                        pass
                    case Generate() | Embed():
                        writer.write(encode_frame(Accepted(id=frame.id)))
                        cancels[frame.id] = threading.Event()
                        ticket = _ticket_of(frame, tickets)
                        task = asyncio.create_task(self._serve(frame, ticket, cancels, writer))
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
        """The connection's first frame must be a Hello with the internal token."""
        payload = await read_frame(reader)
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
        frame: Generate | Embed,
        ticket: Ticket | None,
        cancels: dict[int, threading.Event],
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
                await self._run(frame, cancels[rid], writer)
            finally:
                self.places.done(time.monotonic() - started, ticket)
                self.finished += 1
                self.cancelled += cancels[rid].is_set()
                self.last_done = time.monotonic()
        except DukatError as exc:
            writer.write(encode_frame(Error.of(rid, exc)))
        except Exception as exc:
            log.exception("request %s (rid=%s) failed", rid, frame.request.request_id)
            writer.write(encode_frame(Error.of(rid, InternalError(f"worker error: {type(exc).__name__}"))))
        finally:
            cancels.pop(rid, None)

    def load(self) -> WorkerLoad:
        idle = 0.0 if self.pending else time.monotonic() - self.last_done
        return WorkerLoad(
            in_flight=self.pending,
            finished=self.finished,
            cancelled=self.cancelled,
            idle_s=idle,
            keep_alive_s=self.keep_alive,
        )

    async def _run(
        self, frame: Generate | Embed, cancel: threading.Event, writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        rid = frame.id
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

        def on_text(text: str) -> None:
            if stream:
                outbox.add(writer, encode_frame(Delta(id=rid, text=text)))

        def on_done(item: GenerateResult | BaseException) -> None:
            if isinstance(item, GenerateResult):
                outbox.add(writer, encode_frame(Result(id=rid, result=item)))
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
        )
        try:
            # Planning (templating, tokenizing a possibly long prompt) stays off the loop.
            await loop.run_in_executor(self.executor, start)
            failure = await done
        except asyncio.CancelledError:  # nobody waits for this reply any more
            cancel.set()
            raise
        if failure is not None:
            raise failure

    def _embed(self, request: EmbedRequest, cancel: threading.Event) -> EmbedResult | None:
        # Cancelled while it waited for a thread: nobody reads the vectors, don't make them.
        return None if cancel.is_set() else self.engine.embed(request)

    def _outbox(self, loop: asyncio.AbstractEventLoop) -> Outbox:
        if self.outbox is None or self.outbox.loop is not loop:
            self.outbox = Outbox(loop)
        return self.outbox


def _ticket_of(frame: Generate | Embed, tickets: dict[int, Ticket]) -> Ticket | None:
    """The group whose held place `frame` takes (None: it needs a free place of its own)."""
    if not isinstance(frame, Generate) or frame.ticket is None:
        return None
    ticket = tickets.get(frame.ticket)
    if ticket is None or ticket.unused <= 0:
        return None
    if ticket.left <= 1:
        del tickets[frame.ticket]  # its last generation: nothing more will name it
    return ticket


def _fail(exc: BaseException, model_id: str) -> None:
    if _out_of_memory(exc):
        message = f"loading model {model_id!r} ran out of memory: {type(exc).__name__}: {exc}"
        body: dict[str, Any] = {"code": ModelOutOfMemoryError.code, "message": message, "param": None}
    elif isinstance(exc, DukatError):
        body = {"code": exc.code, "message": exc.message, "param": exc.param}
    else:
        # A library's own error ("header too large") says nothing about which model it was.
        message = f"cannot load model {model_id!r}: {type(exc).__name__}: {exc}"
        body = {"code": "model_load_failed", "message": message, "param": None}
    print(f"{WORKER_FAILED} {json.dumps(body)}", flush=True)


def _out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    return oom is not None and isinstance(exc, oom)


async def _serve_forever(server: WorkerServer, bind: str, port: int) -> None:
    listener = await asyncio.start_server(server.handle, bind, port)
    actual = listener.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Only now: a SIGTERM right after "ready" (an unload) must drain, not kill it mid-start.
    announce_ready(WORKER_READY, actual)
    async with listener:
        await stop.wait()
        # Unload: refuse new requests, let the ones in flight finish (the host SIGKILLs after its
        # stop timeout anyway), so an unload under load fails no request that had started.
        server.draining = True
        deadline = loop.time() + server.drain_s
        while server.pending and loop.time() < deadline:
            await asyncio.sleep(0.01)
    log.info("worker for %s stopping", server.info.model_id)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dukat-model-worker")
    p.add_argument("--model-id", required=True)
    p.add_argument("--path", required=True)
    p.add_argument("--model-type", required=True)
    p.add_argument("--quantization", required=True, choices=QUANTIZATIONS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument(
        "--drain-s", type=float, default=5.0, help="on SIGTERM, wait this long for requests in flight"
    )
    p.add_argument("--max-pending", type=int, default=DEFAULTS.max_batch + DEFAULTS.max_queue)
    # Requests generated together (DUKAT_MAX_BATCH); the engine queues --max-queue more
    # (DUKAT_MAX_QUEUE; default: what --max-pending leaves) and refuses the rest.
    p.add_argument(
        "--quantization-is-default",
        action="store_true",
        help="nobody asked for --quantization: fall back to none if the model can't take it",
    )
    p.add_argument("--max-batch", type=int, default=DEFAULTS.max_batch)
    p.add_argument("--max-queue", type=int, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(load_settings().log_level)  # the host's environment, so its DUKAT_LOG_LEVEL
    die_with_parent()
    local_device = pin_device(args.device, args.threads)
    try:
        from shared.model_types import get_model_type
        from worker.engine import Engine

        load = partial(
            Engine.load,
            args.path,
            model_type=get_model_type(args.model_type),
            device=local_device,
            max_batch=args.max_batch,
            max_queue=max(1, args.max_pending - args.max_batch) if args.max_queue is None else args.max_queue,
        )
        try:
            engine = load(quantization=args.quantization)
        except QuantizationError as exc:
            if not args.quantization_is_default or args.quantization == "none":
                raise
            # Nobody asked for it: a model the default can't quantize still loads, unquantized.
            log.warning("%s; loading %s unquantized instead", exc.message, args.model_id)
            engine = load(quantization="none")
    except BaseException as exc:
        log.exception("loading %s failed", args.model_id)
        _fail(exc, args.model_id)
        return 1
    e = engine.info
    # The host's device name (cuda:N), not the one this process sees (always cuda:0).
    engine_facts = {**msgspec.structs.asdict(e), "device": args.device}
    info = WorkerInfo(**engine_facts, model_id=args.model_id, pid=os.getpid())

    token = load_settings().internal_token  # inherited from the host's environment, never on argv
    server = WorkerServer(
        engine,
        info,
        max_pending=args.max_pending,
        max_batch=args.max_batch,
        drain_s=args.drain_s,
        token=token,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(server, args.bind, args.port))
    engine.close()
    return 0


def _exit_now(code: int) -> None:
    """Leave without the interpreter's teardown: finalizing torch's modules takes seconds that an
    unload would wait for, and a stopped worker has nothing left to save."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit_now(main())
