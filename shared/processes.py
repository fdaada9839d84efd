"""Child processes of ours: start one that announces its port on stdout, stop it for sure."""

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

import httpx

log = logging.getLogger(__name__)
_LOUD = re.compile(r"\b(ERROR|CRITICAL|Traceback)\b")


def _level_of(line: str) -> int:
    """A child's line carries no level: errors and tracebacks stay visible, the rest is info."""
    return logging.ERROR if _LOUD.search(line) else logging.INFO


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
            if line.startswith(self.ready_prefix + " ") and self.port is None:
                self.port = int(line.split()[1])
                ready.set()
                continue
            self.lines.append(line)
            # Through logging, never straight to the terminal: `dukat serve` shows these lines (its
            # logging writes to stderr), a Python program using the seed's API decides for itself.
            log.log(_level_of(line), "%s: %s", self.module, line)
        ready.set()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the child's process group, then SIGKILL: nothing it started outlives it."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
