"""`dukat serve` as the fault, admission and security tests start it: a real process on a free port."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx

from shared.processes import GATEWAY_READY, ChildProcess
from tests.support.checks import wait_for


@contextlib.contextmanager
def dukat_serve(models_dir: Path, env: dict[str, str]) -> Iterator[tuple[str, ChildProcess]]:
    """The served URL and its process, once ready (preloads run in the background); stopped after."""
    proc = ChildProcess(
        "gateway.cli", ["serve", "--port", "0", "--models-dir", str(models_dir)],
        ready_prefix=GATEWAY_READY, env=env,
    )  # fmt: skip
    url = proc.start(timeout=120)
    try:
        wait_for(lambda: httpx.get(f"{url}/health/ready", timeout=30).status_code == 200, 120, "preloaded")
        yield url, proc
    finally:
        proc.stop()
