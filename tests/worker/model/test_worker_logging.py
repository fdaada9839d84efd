"""The model worker logs like the host and the gateway: one format, at DUKAT_LOG_LEVEL (it inherits
the host's environment)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.processes import WORKER_READY, ready_port, terminate


def worker_stderr(model_dir: Path, log_level: str) -> str:
    """What a model worker of the tiny Llama writes on stderr from start to a SIGTERM stop."""
    cmd = [sys.executable, "-m", "worker.model", "--model-id", "tiny/logs", "--path", str(model_dir),
           "--model-type", "llama", "--quantization", "none", "--device", "cpu", "--threads", "1",
           "--drain-s", "0"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DUKAT_LOG_LEVEL": log_level}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert ready_port(line, WORKER_READY) is not None, f"the worker did not start: {line!r}"
    finally:
        terminate(proc.pid, lambda: proc.poll() is not None, 60)  # a busy machine: never the SIGKILL
    _, err = proc.communicate()
    return err


@pytest.mark.parametrize(("level", "shows_info"), [("info", True), ("warning", False)])
def test_model_worker_logs_at_dukat_log_level(
    tiny_model_dir: Callable[[str], Path], level: str, shows_info: bool
) -> None:
    err = worker_stderr(tiny_model_dir("llama"), level)
    stopping = [line for line in err.splitlines() if "worker for tiny/logs stopping" in line]
    assert bool(stopping) == shows_info, err
    if stopping:  # the shared format: time, level, logger name, message
        assert " INFO worker.model.main worker for tiny/logs stopping" in stopping[0]
