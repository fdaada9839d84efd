"""The flags of `dukat host` (`python -m worker.host` too): their own module, so that the CLI builds
its parser without importing the host's server (litestar, huggingface_hub: a second of start-up)."""

from __future__ import annotations

import argparse

HOST_FLAGS = ("host_bind", "host_port", "models_dir", "devices")


def host_arguments() -> argparse.ArgumentParser:
    """The flags of `dukat host` (a parent parser: `python -m worker.host` and the CLI share it)."""
    p = argparse.ArgumentParser(add_help=False)
    # Named like their settings; --bind and --port are the old names, kept.
    p.add_argument("--host-bind", "--bind", dest="host_bind", help="bind address (DUKAT_HOST_BIND)")
    p.add_argument(
        "--host-port", "--port", dest="host_port", type=int, help="port, 0 for any (DUKAT_HOST_PORT)"
    )
    p.add_argument("--models-dir", dest="models_dir", help="DUKAT_MODELS_DIR")
    p.add_argument("--devices", help="auto, cpu or cuda:N,... (DUKAT_DEVICES)")
    return p
