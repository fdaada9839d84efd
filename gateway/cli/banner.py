"""The "Dukat is serving" banner of `dukat serve`: printed once the server answers `/health`, not
when its socket is bound (the lifespan may still be starting the worker host and preloading)."""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from pathlib import Path

import httpx


def public_url(host: str, port: int) -> str:
    """The URL a user on this machine types: a wildcard bind is reached through loopback."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serving_text(url: str) -> str:
    return f"""
Dukat is serving at {url}
  OpenAI base URL: {url}/v1    API docs: {url}/docs
"""


def cli_hint(chat_model: str | None = None) -> str:
    """How to reach `dukat` from another terminal, when this venv's `dukat` is not on PATH."""
    ours = Path(sys.prefix) / "bin" / "dukat"
    found = shutil.which("dukat")
    lines = ["  # The CLI, in another terminal: dukat list | ps | run MODEL | show MODEL | --help"]
    if chat_model:
        lines.append(f"  dukat run {chat_model}")
    if ours.exists() and (found is None or Path(found).resolve() != ours.resolve()):
        venv = os.path.relpath(sys.prefix) if not os.path.relpath(sys.prefix).startswith("..") else sys.prefix
        lines.append(f"  #   `dukat` is in {venv}/bin: first  source {venv}/bin/activate")
    return "\n".join(lines) + "\n"


def loading_text(preload: tuple[str, ...]) -> str:
    if not preload:
        return ""
    names = ", ".join(preload)
    return f"  Loading {names}: requests for them wait until they are ready (a log line says when).\n"


def announce_when_ready(
    url: str,
    text: str,
    *,
    preload: tuple[str, ...] = (),
    interval_s: float = 0.1,
) -> threading.Thread:
    """Print `text` once `url`/health answers 200 (a daemon thread: it dies with the server), and
    which models of `preload` are still loading (the log says `ready: MODEL` as each is)."""

    def wait_then_print() -> None:
        # A long read timeout: a probe sent while the lifespan runs waits in the listen backlog.
        with httpx.Client(timeout=httpx.Timeout(5, read=600)) as client:
            while True:
                try:
                    if client.get(f"{url}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(interval_s)
        print(text + loading_text(preload), flush=True)

    thread = threading.Thread(target=wait_then_print, name="dukat-banner", daemon=True)
    thread.start()
    return thread

