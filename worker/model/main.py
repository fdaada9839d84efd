"""The model worker process: one loaded model, pinned to one device, serving the framed wire
(`worker.model.wire_server`).

Started by the worker host as `python -m worker.model ...`. The device is pinned through
`CUDA_VISIBLE_DEVICES` before torch is imported, so `cuda:N` is the only GPU this process sees.
Handshake on stdout (one line): `DUKAT_WORKER_READY <port>` or `DUKAT_WORKER_FAILED <json error>`;
logs go to stderr, which the host keeps the tail of.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import logging
import os
import signal
import sys
from fnmatch import fnmatchcase
from functools import partial
from typing import Any

import msgspec

from shared.errors import DukatError, ModelOutOfMemoryError, QuantizationError
from shared.host_api import device_kind
from shared.logs import setup_logging
from shared.processes import WORKER_FAILED, WORKER_READY, announce_ready, die_with_parent, pinned_env
from shared.settings import DEFAULTS, QUANTIZATIONS, load_settings
from shared.tracing import Tracing
from shared.wire import WorkerInfo
from worker.model.wire_server import WorkerServer

log = logging.getLogger(__name__)


def pin_device(device: str, threads: int) -> str:
    """Make `device` the only one this process sees; returns the device name inside the process.

    Must run before torch is imported: CUDA reads CUDA_VISIBLE_DEVICES once, at initialisation.
    """
    os.environ.update(pinned_env(device, threads))  # the host sets these too; a worker run by hand needs them
    return "cuda:0" if device_kind(device) == "cuda" else "cpu"


def _return_freed_memory() -> None:
    """Hand the heap a load freed back to the OS: a quantized load first builds the float model,
    and glibc keeps what it freed (Gemma 3 270M 4bit: RSS 1147 -> 927 MB). Elsewhere: nothing."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


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
    p.add_argument("--bind", default=DEFAULTS.host_bind)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--threads", type=int, default=DEFAULTS.worker_threads)
    p.add_argument(
        "--drain-s", type=float, default=5.0, help="on SIGTERM, wait this long for requests in flight"
    )
    p.add_argument(
        "--quantization-is-default",
        action="store_true",
        help="nobody asked for --quantization: fall back to none if the model can't take it",
    )
    # Requests generated together (DUKAT_MAX_BATCH); the engine queues --max-queue more
    # (DUKAT_MAX_QUEUE) and refuses the rest.
    p.add_argument("--max-batch", type=int, default=DEFAULTS.max_batch)
    p.add_argument("--max-queue", type=int, default=DEFAULTS.max_queue)
    # A request whose queue wait would pass this (DUKAT_FIRST_TOKEN_TIMEOUT_S) is refused instead.
    p.add_argument("--max-wait-s", type=float, default=DEFAULTS.first_token_timeout_s)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = load_settings()  # the host's environment: its DUKAT_LOG_LEVEL/LOG_FORMAT, caching settings
    setup_logging(settings.log_level, settings.log_format, "model_worker")
    die_with_parent()
    local_device = pin_device(args.device, args.threads)
    try:
        from shared.model_types import get_model_type
        from worker.model.engine import Engine
        from worker.model.grammar_limits import GrammarLimits

        load = partial(
            Engine.load,
            args.path,
            model_type=get_model_type(args.model_type),
            device=local_device,
            max_batch=args.max_batch,
            max_queue=args.max_queue,
            # DUKAT_PREFIX_CACHE_TOKENS, DUKAT_PREFILL_CHUNK_TOKENS: the host's environment
            prefix_cache_tokens=settings.prefix_cache_tokens,
            prefill_chunk_tokens=settings.prefill_chunk_tokens,
            own_decode_step=settings.own_decode_step,
            cuda_graphs=settings.cuda_graphs,
            cuda_graph_kv_tokens=settings.cuda_graph_kv_tokens,
            cuda_4bit=settings.cuda_4bit,
            max_image_bytes=settings.max_image_bytes,
            max_image_pixels=settings.max_image_pixels,
            # DUKAT_MAX_LORAS, DUKAT_MODELS_DIR: LoRA adapters are folders there, read at first use
            max_loras=settings.max_loras,
            models_dir=settings.models_dir,
            grammar_limits=GrammarLimits.of(settings),
            # The host's environment: a model's own code runs only where an admin named the model.
            trust_remote_code=any(fnmatchcase(args.model_id, p) for p in load_settings().trust_remote_code),
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
    # The loaded model's objects live as long as the process: out of the collector's sight, a full
    # collection no longer walks them in the middle of a batch (200+ ms stalls on a first token).
    gc.collect()
    gc.freeze()
    _return_freed_memory()
    e = engine.info
    # The host's device name (cuda:N), not the one this process sees (always cuda:0).
    engine_facts = {**msgspec.structs.asdict(e), "device": args.device}
    info = WorkerInfo(**engine_facts, model_id=args.model_id, pid=os.getpid())

    token = settings.internal_token  # inherited from the host's environment, never on argv
    server = WorkerServer(
        engine,
        info,
        max_pending=args.max_batch + args.max_queue,  # what the engine takes before it refuses
        max_batch=args.max_batch,
        max_wait_s=args.max_wait_s,
        drain_s=args.drain_s,
        token=token,
        # DUKAT_OTEL_ENDPOINT (or OTEL_EXPORTER_OTLP_ENDPOINT): the host's environment
        tracing=(tracing := Tracing.configure(settings.otel_endpoint, "model-worker")),
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(server, args.bind, args.port))
    tracing.shutdown()  # its last spans are exported before the process ends
    engine.close()
    return 0


def exit_now(code: int) -> None:
    """Leave without the interpreter's teardown: finalizing torch's modules takes seconds that an
    unload would wait for, and a stopped worker has nothing left to save."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
