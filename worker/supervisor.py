"""Spawns, watches and stops model worker processes: one per loaded model.

A load is idempotent: a second load of a model that is loading or loaded joins the first. A
worker that exits on its own is reported `failed` with its last log lines. Unload means the process
exits (SIGTERM, then SIGKILL after a timeout), so its memory is really given back.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import msgspec

from shared.errors import ConflictError, DukatError, ModelLoadFailedError, NotFoundError, error_from_code
from shared.host_api import WorkerState
from shared.wire import WorkerInfo

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
    # The quantization is the default, not asked for: the worker may fall back to none.
    quantization_is_default: bool = False


@dataclass
class _Worker:
    spec: WorkerSpec
    state: WorkerState
    process: asyncio.subprocess.Process | None = None
    ready: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    logs: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=_LOG_TAIL))
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    error: DukatError | None = None


class Supervisor:
    def __init__(
        self,
        *,
        bind: str,
        advertise: str,
        threads: int,
        max_batch: int,
        max_queue: int,
        stop_timeout_s: float,
        load_timeout_s: float,
        token: str | None = None,
    ) -> None:
        self.bind = bind
        # The internal token: handed to each worker in its environment, sent on every connection.
        self.token = token
        self.advertise = advertise
        self.threads = threads
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.stop_timeout_s = stop_timeout_s
        self.load_timeout_s = load_timeout_s
        self._workers: dict[str, _Worker] = {}

    def states(self) -> list[WorkerState]:
        return [msgspec.structs.replace(w.state, log_tail=list(w.logs)) for w in self._workers.values()]

    def state(self, model_id: str) -> WorkerState | None:
        w = self._workers.get(model_id)
        return msgspec.structs.replace(w.state, log_tail=list(w.logs)) if w else None

    async def load(
        self,
        model_id: str,
        quantization: str | None,
        device: str | None,
        prepare: Callable[[], Awaitable[WorkerSpec]],
    ) -> WorkerState:
        """The worker of `model_id`, once it answers.

        The one place that decides whether a load is a repeat: a worker loading or loaded is joined
        (unless the load asks for another `quantization` or `device`: a conflict). Otherwise
        `prepare` makes the spec (it may download first) and a new worker starts.
        """
        worker = self._joinable(model_id, quantization, device)
        if worker is None:
            spec = await prepare()
            # `prepare` may have waited on a download: a load that came meanwhile may have started one.
            worker = self._joinable(model_id, quantization, device) or await self._restart(spec)
        await asyncio.shield(worker.ready)
        return self.state(model_id)  # type: ignore[return-value]

    def _joinable(self, model_id: str, quantization: str | None, device: str | None) -> _Worker | None:
        worker = self._workers.get(model_id)
        if worker is None or worker.state.status not in ("loading", "loaded"):
            return None
        _check_same_load(worker.state, quantization, device)
        return worker

    async def _restart(self, spec: WorkerSpec) -> _Worker:
        current = self._workers.get(spec.model_id)
        if current is not None and current.state.status == "stopping":
            await self.unload(spec.model_id)
        return self._start(spec)

    def _start(self, spec: WorkerSpec) -> _Worker:
        state = WorkerState(
            model_id=spec.model_id,
            status="loading",
            device=spec.device,
            quantization=spec.quantization,
            model_type=spec.model_type,
            started_at=time.time(),
        )
        worker = _Worker(spec=spec, state=state)
        self._workers[spec.model_id] = worker
        worker.tasks.append(asyncio.create_task(self._run(worker)))
        return worker

    async def _run(self, worker: _Worker) -> None:
        spec = worker.spec
        cmd = [
            sys.executable,
            "-m",
            "worker.model_worker",
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
            self.bind,
            "--threads",
            str(self.threads),
            "--max-batch",
            str(self.max_batch),
            "--max-queue",
            str(self.max_queue),
            "--max-pending",
            str(self.max_batch + self.max_queue),
            # Requests in flight may finish before the SIGKILL that follows SIGTERM after stop_timeout_s.
            "--drain-s",
            str(max(0.0, self.stop_timeout_s - 1.0)),
            *(["--quantization-is-default"] if spec.quantization_is_default else []),
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.token:
            env["DUKAT_INTERNAL_TOKEN"] = self.token
        try:
            worker.process = await asyncio.create_subprocess_exec(
                *cmd,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            self._failed(worker, ModelLoadFailedError(f"cannot start a worker: {exc}"))
            return
        worker.state.pid = worker.process.pid
        worker.tasks.append(asyncio.create_task(self._pipe_logs(worker)))
        try:
            await asyncio.wait_for(self._handshake(worker), self.load_timeout_s)
        except TimeoutError:
            err = ModelLoadFailedError(f"worker did not load within {self.load_timeout_s:.0f} s")
            self._failed(worker, err, settle=False)
        if worker.state.status == "failed":
            # A failed load leaves no process (nor its memory) behind by the time the load answers.
            await self._terminate(worker.process)
            self._settle(worker)
            return
        assert worker.process.stdout
        async for raw in worker.process.stdout:  # keep draining: a full pipe would block the worker
            worker.logs.append(raw.decode(errors="replace").rstrip())
        code = await worker.process.wait()
        if worker.state.status == "loaded":
            err = ModelLoadFailedError(f"model worker for {spec.model_id!r} exited with code {code}")
            self._failed(worker, err)
            tail = "\n".join(worker.logs)
            log.warning("worker %s exited with %s; last log lines:\n%s", spec.model_id, code, tail)

    async def _handshake(self, worker: _Worker) -> None:
        assert worker.process and worker.process.stdout
        async for raw in worker.process.stdout:
            line = raw.decode(errors="replace").strip()
            if line.startswith("DUKAT_WORKER_READY "):
                port = int(line.split()[1])
                try:
                    await self._ready(worker, port)
                except Exception as exc:  # it said ready but does not answer: a failed load, not a hang
                    what = f"{type(exc).__name__}: {exc}"
                    message = f"model worker for {worker.spec.model_id!r} does not answer: {what}"
                    self._failed(worker, ModelLoadFailedError(message), settle=False)
                return
            if line.startswith("DUKAT_WORKER_FAILED "):
                body = json.loads(line.partition(" ")[2])
                err = error_from_code(body.get("code"), body.get("message", "load failed"), body.get("param"))
                self._failed(worker, err, settle=False)
                return
        self._failed(worker, ModelLoadFailedError("model worker exited while loading"), settle=False)

    async def _ready(self, worker: _Worker, port: int) -> None:
        # Ready means it answers: one ping over the real wire, which also brings the model's facts.
        from shared.wire_client import ping

        address = f"{self.advertise}:{port}"
        info = await ping(address, token=self.token)
        s = worker.state
        s.address, s.status = address, "loaded"
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

    async def _pipe_logs(self, worker: _Worker) -> None:
        assert worker.process and worker.process.stderr
        async for raw in worker.process.stderr:
            line = raw.decode(errors="replace").rstrip()
            worker.logs.append(line)
            # While loading, a worker's lines are its progress (a GGUF's first load converts for minutes).
            level = logging.INFO if worker.state.status == "loading" else logging.DEBUG
            log.log(level, "[%s] %s", worker.spec.model_id, line)

    async def unload(self, model_id: str) -> None:
        worker = self._workers.get(model_id)
        if worker is None:
            raise NotFoundError(f"model {model_id!r} is not loaded; nothing to unload", param="model")
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
        if self._workers.get(model_id) is worker:
            del self._workers[model_id]

    async def _terminate(self, process: asyncio.subprocess.Process) -> None:
        """SIGTERM, wait, then SIGKILL: a worker never outlives its unload."""
        if process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), self.stop_timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def close(self) -> None:
        await asyncio.gather(*(self.unload(m) for m in list(self._workers)), return_exceptions=True)


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
