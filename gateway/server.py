"""`dukat serve`: the gateway in the foreground; its ModelManager starts a local worker host when
no `DUKAT_WORKER_HOSTS` are configured, and stops it on exit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from gateway.app import create_app
from shared.logs import setup_logging
from shared.serving import bind_socket, serve
from shared.settings import load_settings

READY = "DUKAT_GATEWAY_READY"


def run_server(overrides: dict[str, Any], *, demo: bool = False) -> int:
    settings = load_settings(overrides=overrides)
    setup_logging(settings.log_level)
    if demo:
        from gateway.demo import prepare_demo, usage_text

        Path(settings.models_dir).mkdir(parents=True, exist_ok=True)
        preload = prepare_demo(Path(settings.models_dir), Path(settings.config_path))
        settings = msgspec.structs.replace(
            settings, preload=tuple(dict.fromkeys([*settings.preload, *preload]))
        )
    sock = bind_socket(settings.host, settings.port)
    port = sock.getsockname()[1]
    if demo:
        print(usage_text(f"http://{settings.host}:{port}"), flush=True)
    serve(create_app(settings), sock, ready_prefix=READY, log_level=settings.log_level)
    return 0
