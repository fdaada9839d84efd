"""Starts, joins and stops model worker processes: one per loaded model and replica.

A load is idempotent: a second load of a model that is loading or loaded joins the first. Ready
means the worker answers a ping on the wire. A loaded worker is kept alive by its `Lifeline`
(worker.host.healing). Unload means the process exits (SIGTERM, then SIGKILL after a timeout), so its
memory is really given back.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import msgspec

from shared.errors import (
    ConflictError,
    DukatError,
    ModelLoadFailedError,
    ModelOutOfMemoryError,
    NotFoundError,
    error_from_code,
)
from shared.host_api import LIVE_STATUSES, WorkerState
from shared.logs import CHILD_RECORD, parse_line
from shared.processes import WORKER_FAILED, WORKER_READY, child_line, pinned_env, ready_port, terminate
from shared.settings import Settings
from shared.wire import WorkerInfo, WorkerLoad
from shared.wire_client import WorkerConnection
from worker.host.healing import Healing, Lifeline
from worker.host.loop_clock import LATE_S, LoopClock

log = logging.getLogger(__name__)
_LOG_TAIL = 40
# What the worker's engine says about the loaded model, taken into its state as reported. Not its
# device: the worker sees its one GPU as cuda:0, the host knows which one it is.
_ENGINE_FACTS = sorted(set(WorkerInfo.__struct_fields__) & set(WorkerState.__struct_fields__) - {"device"})


@dataclass
class WorkerSpec:
    model_id: str
    path: str
    model_type: str
    quantization: str
    device: str
    replica: int = 0
    # The quantization is the default, not asked for: the worker may fall back to none.
    quantization_is_default: bool = False
    # Memory set aside for it, and its keep-alive when requests give none (negative: forever).
    estimated_bytes: int = 0
    keep_alive_s: float | None = None


@dataclass
class _Worker:
    spec: WorkerSpec
    state: WorkerState
    logs: collections.deque[str]
    life: Lifeline
    process: asyncio.subprocess.Process | None = None
    ready: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    error: DukatError | None = None


class Supervisor:
    """The model worker processes of one host: owns their specs, processes, handshakes and states;
    starts, joins a repeated load, restarts (with Healing) and stops them.

    Must not: decide where or whether a model fits (the Host and room.py do), download, or import
    the model worker's code (it runs `python -m worker.model` and reads its ready line).
    """

    def __init__(self, settings: Settings, *, advertise: str) -> None:
        """`advertise`: the address the host's clients reach its workers at (their port added)."""
        self.settings = settings
        self.advertise = advertise
        self.healing = Healing.of(settings)
        self.clock = LoopClock()  # run by the host's lifespan
        # (model id, replica) -> its worker.
        self._workers: dict[tuple[str, int], _Worker] = {}
        self._starting: dict[tuple[str, int], asyncio.Future[_Worker]] = {}  # prepared, not yet started

    def states(self) -> list[WorkerState]:
        return [_snapshot(w) for w in self._workers.values()]

    def state(self, model_id: str, replica: int = 0) -> WorkerState | None:
        w = self._workers.get((model_id, replica))
        return _snapshot(w) if w else None

    def replicas_of(self, model_id: str) -> list[WorkerState]:
        return [_snapshot(w) for (m, _), w in sorted(self._workers.items()) if m == model_id]

    async def load(
        self,
        model_id: str,
        quantization: str | None,
        device: str | None,
        prepare: Callable[[], Awaitable[WorkerSpec]],
        replica: int = 0,
    ) -> WorkerState:
        """The worker of `model_id` (its `replica`), once it answers.

        The one place that decides whether a load is a repeat: a worker loading or loaded is joined
        (unless the load asks for another `quantization` or `device`: a conflict). Otherwise
        `prepare` makes the spec (it may download first) and a new worker starts.
        """
        key = (model_id, replica)
        worker = self._joinable(key, quantization, device)
        if worker is None:
            # One start per worker: `prepare` yields (it reads files in threads, may download), and
            # a second load of the same worker meanwhile (another gateway's) joins this one rather
            # than placing a second worker (or finding the device full of the first).
            starting = self._starting.get(key)
            if starting is None:
                starting = asyncio.ensure_future(self._prepare_and_start(key, quantization, device, prepare))
                self._starting[key] = starting
                starting.add_done_callback(lambda done: self._forget_start(key, done))
            worker = await asyncio.shield(starting)
            _check_same_load(worker.state, quantization, device if replica == 0 else None)
        await asyncio.shield(worker.ready)
        return self.state(model_id, replica)  # type: ignore[return-value]

    def _forget_start(self, key: tuple[str, int], done: asyncio.Future[_Worker]) -> None:
        if self._starting.get(key) is done:
            del self._starting[key]

    async def _prepare_and_start(
        self,
        key: tuple[str, int],
        quantization: str | None,
        device: str | None,
        prepare: Callable[[], Awaitable[WorkerSpec]],
    ) -> _Worker:
        spec = await prepare()
        # `prepare` may have waited on a download: a load that came meanwhile may have started one.
        return self._joinable(key, quantization, device) or await self._restart(spec)

    def _joinable(
        self, key: tuple[str, int], quantization: str | None, device: str | None
    ) -> _Worker | None:
        worker = self._workers.get(key)
        if worker is None or worker.state.status not in LIVE_STATUSES:
            return None
        _check_same_load(worker.state, quantization, device if key[1] == 0 else None)
        return worker

    async def _restart(self, spec: WorkerSpec) -> _Worker:
        current = self._workers.get((spec.model_id, spec.replica))
        if current is not None and current.state.status == "stopping":
            await self.unload(spec.model_id, spec.replica)
        return self._start(spec)

    def _start(self, spec: WorkerSpec) -> _Worker:
        state = WorkerState(
            model_id=spec.model_id,
            replica=spec.replica,
            status="loading",
            device=spec.device,
            quantization=spec.quantization,
            model_type=spec.model_type,
            started_at=time.time(),
            estimated_bytes=spec.estimated_bytes,
            keep_alive_s=spec.keep_alive_s,
            last_used_at=time.time(),
        )
        logs: collections.deque[str] = collections.deque(maxlen=_LOG_TAIL)
        life = Lifeline(self.healing, state, logs, self.clock)
        worker = _Worker(spec=spec, state=state, logs=logs, life=life)
        self._workers[(spec.model_id, spec.replica)] = worker
        run = worker.life.run(
            partial(self._attempt, worker),
            restarting=partial(self._renew_ready, worker),
            fail=partial(self._failed, worker),
        )
        worker.tasks.append(asyncio.create_task(run))
        return worker

    @staticmethod
    def _renew_ready(worker: _Worker) -> None:
        """Loads that come while a worker restarts wait for its next process."""
        if worker.ready.done():
            worker.ready = asyncio.get_running_loop().create_future()

    async def _attempt(self, worker: _Worker) -> int | None:
        """One process of the worker, from spawn to exit. Returns the exit code of a process that
        had loaded (it is to be restarted), or None when it never loaded (the worker is `failed`)."""
        spec = worker.spec
        try:
            process = await asyncio.create_subprocess_exec(
                *self._command(spec),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env(spec),
                start_new_session=True,
            )
        except OSError as exc:
            self._failed(worker, ModelLoadFailedError(f"cannot start a worker: {exc}"))
            return None
        worker.process = process
        worker.state.pid = process.pid
        worker.tasks.append(asyncio.create_task(self._pipe_logs(worker, process)))
        conn: WorkerConnection | None = None
        try:
            conn = await asyncio.wait_for(self._handshake(worker, process), self.settings.load_timeout_s)
        except TimeoutError:
            err = ModelLoadFailedError(f"worker did not load within {self.settings.load_timeout_s:.0f} s")
            self._failed(worker, err, settle=False)
        if conn is None or worker.state.status == "failed":
            # A failed load leaves no process (nor its memory) behind by the time the load answers.
            await self._terminate(process)
            self._settle(worker)
            return None
        observe = partial(self.observe, spec.model_id, replica=spec.replica)
        watchdog = asyncio.create_task(worker.life.watch(process, conn, observe))
        try:
            assert process.stdout
            async for raw in process.stdout:  # keep draining: a full pipe would block the worker
                worker.logs.append(raw.decode(errors="replace").rstrip())
            code = await process.wait()
        finally:
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)
            await conn.close()
        return code if worker.state.status == "loaded" else None

    def _env(self, spec: WorkerSpec) -> dict[str, str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **pinned_env(spec.device, self.settings.worker_threads)}
        if self.settings.internal_token:  # in the environment, never on argv; sent on every connection
            env["DUKAT_INTERNAL_TOKEN"] = self.settings.internal_token
        # Where the worker reads LoRA adapters, and how many it keeps: the host's, however it was told.
        env["DUKAT_MODELS_DIR"] = str(Path(self.settings.models_dir).resolve())
        env["DUKAT_MAX_LORAS"] = str(self.settings.max_loras)
        if self.settings.otel_endpoint:  # the worker's spans go where the host's settings say
            env["DUKAT_OTEL_ENDPOINT"] = self.settings.otel_endpoint
        return env

    def _command(self, spec: WorkerSpec) -> list[str]:
        return [
            sys.executable,
            "-m",
            "worker.model",
            "--model-id",
            spec.model_id,
            "--path",
            spec.path,
            "--model-type",
            spec.model_type,
            "--quantization",
            spec.quantization,
            "--device",
            spec.device,
            "--bind",
            self.settings.host_bind,
            "--threads",
            str(self.settings.worker_threads),
            "--max-batch",
            str(self.settings.max_batch),
            "--max-queue",
            str(self.settings.max_queue),
            "--max-wait-s",
            str(self.settings.first_token_timeout_s),
            # Requests in flight may finish before the SIGKILL that follows SIGTERM after stop_timeout_s.
            "--drain-s",
            str(max(0.0, self.settings.stop_timeout_s - 1.0)),
            *(["--quantization-is-default"] if spec.quantization_is_default else []),
        ]

    async def _handshake(
        self, worker: _Worker, process: asyncio.subprocess.Process
    ) -> WorkerConnection | None:
        """The worker's connection once it answers; None when its load failed."""
        assert process.stdout
        async for raw in process.stdout:
            line = raw.decode(errors="replace").strip()
            if (port := ready_port(line, WORKER_READY)) is not None:
                conn = WorkerConnection(f"{self.advertise}:{port}", self.settings.internal_token)
                try:
                    await self._ready(worker, conn)
                except Exception as exc:  # it said ready but does not answer: a failed load, not a hang
                    await conn.close()
                    what = f"{type(exc).__name__}: {exc}"
                    message = f"model worker for {worker.spec.model_id!r} does not answer: {what}"
                    self._failed(worker, ModelLoadFailedError(message), settle=False)
                    return None
                return conn
            if line.startswith(WORKER_FAILED + " "):
                body = json.loads(line.partition(" ")[2])
                err = error_from_code(body.get("code"), body.get("message", "load failed"), body.get("param"))
                self._failed(worker, err, settle=False)
                return None
        self._failed(worker, _died_loading(worker.spec.model_id, await process.wait()), settle=False)
        return None

    async def _ready(self, worker: _Worker, conn: WorkerConnection) -> None:
        # Ready means it answers: one ping over the real wire, which also brings the model's facts
        # (asked again when this host was late itself: then the silence may be the host's).
        while True:
            asked = time.monotonic()
            try:
                info = (await asyncio.wait_for(conn.pong(), self.healing.ping_timeout_s)).info
                break
            except TimeoutError:
                if self.clock.late_since(asked) < LATE_S:
                    raise
        s = worker.state
        s.address, s.status = conn.address, "loaded"
        for name in _ENGINE_FACTS:
            setattr(s, name, getattr(info, name))
        if not worker.ready.done():
            worker.ready.set_result(None)

    def _failed(self, worker: _Worker, err: DukatError, *, settle: bool = True) -> None:
        s = worker.state
        s.status, s.address, s.error, s.error_code = "failed", None, err.message, err.code
        worker.error = err
        if settle:
            self._settle(worker)

    @staticmethod
    def _settle(worker: _Worker) -> None:
        """Answer the loads waiting on a worker that failed."""
        if not worker.ready.done() and worker.error is not None:
            worker.ready.set_exception(worker.error)
            worker.ready.exception()  # retrieved here: a load nobody waits on must not warn

    async def _pipe_logs(self, worker: _Worker, process: asyncio.subprocess.Process) -> None:
        assert process.stderr
        async for raw in process.stderr:
            line = raw.decode(errors="replace").rstrip()
            worker.logs.append(line)
            # While loading, a worker's lines are its progress (a GGUF's first load converts for minutes).
            level = logging.INFO if worker.state.status == "loading" else logging.DEBUG
            # A JSON line of a worker (DUKAT_LOG_FORMAT=json) travels as an object, not a quoted string;
            # a text line of FORMAT is logged again without its own timestamp (one timestamp: ours).
            own_level, text, record = child_line(line)
            if record is not None:
                record.setdefault("model", worker.spec.model_id)
            elif (parsed := parse_line(line)) is not None:
                own_level, text = parsed[0], f"{parsed[1]} {parsed[2]}"
            else:
                own_level = level  # a line with no level of its own (a traceback's, a library's print)
            # Its warnings stay warnings, but not the noise of a process being stopped.
            level = level if worker.state.status == "stopping" else max(level, own_level)
            log.log(level, "[%s] %s", worker.spec.model_id, text, extra={CHILD_RECORD: record})

    def observe(self, model_id: str, load: WorkerLoad, replica: int = 0) -> None:
        """A loaded worker's counters from its Pong; the last request's keep_alive wins over the load's."""
        worker = self._workers.get((model_id, replica))
        if worker is None or worker.state.status != "loaded":
            return
        s = worker.state
        s.in_flight, s.finished, s.cancelled = load.in_flight, load.finished, load.cancelled
        s.idle_s, s.adapters = load.idle_s, list(load.adapters)
        s.last_used_at = time.time() - load.idle_s
        s.keep_alive_s = worker.spec.keep_alive_s if load.keep_alive_s is None else load.keep_alive_s

    async def unload(self, model_id: str, replica: int | None = None) -> None:
        """Stop the model's worker `replica`, or (None) all of its workers, together."""
        keys = [k for k in self._workers if k[0] == model_id and replica in (None, k[1])]
        if not keys:
            raise NotFoundError(f"model {model_id!r} is not loaded; nothing to unload", param="model")
        await asyncio.gather(*(self._stop(key, self._workers[key]) for key in keys))

    async def _stop(self, key: tuple[str, int], worker: _Worker) -> None:
        model_id = key[0]
        worker.state.status = "stopping"
        if not worker.ready.done():
            # A load waiting on this worker must get an answer, not wait on a future nobody sets.
            worker.ready.set_exception(ModelLoadFailedError(f"model {model_id!r} was unloaded while loading"))
            worker.ready.exception()
        if worker.process is not None:
            await self._terminate(worker.process)
        for task in worker.tasks:
            task.cancel()
        await asyncio.gather(*worker.tasks, return_exceptions=True)
        if self._workers.get(key) is worker:
            del self._workers[key]

    async def _terminate(self, process: asyncio.subprocess.Process) -> None:
        """SIGTERM, wait, then SIGKILL, to the worker's whole process group: a worker (nor anything
        it started) never outlives its unload."""
        exited = lambda: process.returncode is not None  # noqa: E731 - set by this loop, read by the thread
        await asyncio.to_thread(terminate, process.pid, exited, self.settings.stop_timeout_s)
        await process.wait()

    async def close(self) -> None:
        await asyncio.gather(*(self.unload(m, r) for m, r in list(self._workers)), return_exceptions=True)


def _snapshot(worker: _Worker) -> WorkerState:
    return msgspec.structs.replace(worker.state, log_tail=list(worker.logs))


def _check_same_load(worker: WorkerState, quantization: str | None, device: str | None) -> None:
    """A load of a model that is loading or loaded is idempotent, unless it asks for something else
    explicitly: then it is a conflict, never the old worker passed off as the new one."""
    wrong: dict[str, str] = {}
    if device not in (None, "auto") and device != worker.device:
        wrong["device"] = f"device {worker.device!r}, not {device!r}"
    if quantization is not None and quantization != worker.quantization:
        wrong["quantization"] = f"quantization {worker.quantization!r}, not {quantization!r}"
    if wrong:
        raise ConflictError(
            f"model {worker.model_id!r} is already {worker.status} with {' and '.join(wrong.values())}; "
            "unload it first to load it differently",
            param=next(reversed(wrong)),
        )


def _died_loading(model_id: str, code: int) -> DukatError:
    if code == -signal.SIGKILL:  # what the kernel's OOM killer does to a load that outgrows RAM
        message = f"model worker for {model_id!r} was killed (SIGKILL) while loading: likely out of memory"
        return ModelOutOfMemoryError(message)
    return ModelLoadFailedError(f"model worker exited while loading (code {code})")
