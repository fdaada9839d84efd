"""Child processes of ours: the ready line a child announces its port with, the one way to stop a
child for sure (its whole process group), and `ChildProcess`, a child Python module we wait on."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import httpx

from shared.host_api import device_kind
from shared.logs import CHILD_RECORD, json_record, parse_line

# The model worker's handshake lines (`python -m worker.model` prints, `worker.host.supervisor` reads them).
WORKER_READY = "DUKAT_WORKER_READY"
WORKER_FAILED = "DUKAT_WORKER_FAILED"
# The worker host's ready line (`python -m worker.host` prints it, the gateway waits for it).
HOST_READY = "DUKAT_HOST_READY"
# The gateway's ready line (`dukat serve` prints it once it listens; tests and bench wait for it).
GATEWAY_READY = "DUKAT_GATEWAY_READY"
_EXIT_POLL_S = 0.02


def announce_ready(prefix: str, port: int) -> None:
    """Tell the parent, on stdout, that this process listens on `port`."""
    print(f"{prefix} {port}", flush=True)


def ready_port(line: str, prefix: str) -> int | None:
    """The port of a line `announce_ready(prefix, port)` printed, else None."""
    head, _, port = line.strip().partition(" ")
    return int(port) if head == prefix and port.isdigit() else None


def terminate(pid: int, exited: Callable[[], bool], timeout: float) -> None:
    """SIGTERM to the process group of `pid`, up to `timeout` s for `exited()`, then SIGKILL to the
    group: nothing the child started outlives it (children are started in their own session).
    Blocking: async callers run it in a thread while their loop notices the exit."""
    if exited():
        return
    _signal_group(pid, signal.SIGTERM)
    if not _wait_until(exited, timeout):
        _signal_group(pid, signal.SIGKILL)
        _wait_until(exited, timeout)


def kill_group(pid: int) -> None:
    """SIGKILL to the process group of `pid` at once (a hung child ignores SIGTERM)."""
    _signal_group(pid, signal.SIGKILL)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _wait_until(done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(_EXIT_POLL_S)
    return True


log = logging.getLogger(__name__)
_LOUD = re.compile(r"\b(ERROR|CRITICAL|Traceback)\b")


def child_line(line: str) -> tuple[int, str, dict[str, Any] | None]:
    """A child's output line as (level, text, its JSON record when it logs JSON). A text line carries
    no level: errors and tracebacks stay visible, the rest is info."""
    record = json_record(line)
    if record is not None:
        level = logging.getLevelName(str(record.get("level", "INFO")))
        return (level if isinstance(level, int) else logging.INFO), str(record.get("message", "")), record
    return (logging.ERROR if _LOUD.search(line) else logging.INFO), line, None


class ChildProcess:
    """A `python -m <module>` child that prints `<ready_prefix> <port>` once it listens.

    Its other output is kept (the last lines) so a failed start can say why.
    """

    def __init__(
        self, module: str, args: list[str], *, ready_prefix: str, env: dict[str, str] | None = None
    ) -> None:
        self.module = module
        self.args = args
        self.ready_prefix = ready_prefix
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.port: int | None = None
        self.lines: deque[str] = deque(maxlen=50)

    def start(self, timeout: float = 60.0) -> str:
        """Start and wait until `/health` answers; returns the base URL."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            start_new_session=True,
        )
        ready = threading.Event()
        threading.Thread(target=self._pump, args=(ready,), daemon=True).start()
        if not ready.wait(timeout) or self.port is None:
            self.stop()
            raise RuntimeError(f"{self.module} did not start:\n" + "\n".join(self.lines))
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    return url
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.module} did not answer /health:\n" + "\n".join(self.lines))

    def _pump(self, ready: threading.Event) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            line = line.rstrip()
            if self.port is None and (port := ready_port(line, self.ready_prefix)) is not None:
                self.port = port
                ready.set()
                continue
            self.lines.append(line)
            # Through logging, never straight to the terminal: `dukat serve` shows these lines (its
            # logging writes to stderr), a Python program using the seed's API decides for itself.
            # A JSON line passes through as the child's own object; a text line of FORMAT is logged
            # again at its level under its logger's name (one timestamp: ours); any other as it is.
            level, text, record = child_line(line)
            if record is None and (parsed := parse_line(line)) is not None:
                level, name, message = parsed
                logging.getLogger(name).log(level, "%s", message)
            else:
                log.log(level, "%s: %s", self.module, text, extra={CHILD_RECORD: record})
        ready.set()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the child's process group, then SIGKILL: nothing it started outlives it."""
        proc = self.proc
        if proc is not None:
            terminate(proc.pid, lambda: proc.poll() is not None, timeout)

def pinned_env(device: str, threads: int) -> dict[str, str]:
    """The environment that makes `device` the only one a model worker sees (cuda:N is cuda:0 inside
    it; cpu hides every GPU), with its CPU thread counts. Set at the worker's spawn, so CUDA reads it
    whoever initialises it first, and visible to tools that read a process's environment."""
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads > 0 else {}
    # OpenMP's threads sleep between torch's ops instead of spinning for milliseconds on the cores
    # the CPU block kernels' own threads need (worker/model/cpu_kernels/spin_pool.h): a decode step
    # of Gemma 3 270M 4bit ran 2-7x slower beside them spinning.
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    env["CUDA_VISIBLE_DEVICES"] = device.partition(":")[2] or "0" if device_kind(device) == "cuda" else ""
    return env


def die_with_parent() -> None:
    """Ask Linux to SIGTERM us when our parent dies, even by SIGKILL: no orphans (a model worker's
    GPU memory, a gateway's intake process)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
