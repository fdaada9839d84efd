"""`dukat serve`: the gateway in the foreground; its ModelManager starts a local worker host when
no `DUKAT_WORKER_HOSTS` are configured, and stops it on exit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from gateway.app import create_app
from gateway.cli.banner import announce_when_ready, cli_hint, public_url, serving_text
from shared.http_server import bind_socket, serve
from shared.logs import setup_logging
from shared.processes import GATEWAY_READY
from shared.settings import load_settings


def run_server(overrides: dict[str, Any], *, demo: bool = False) -> int:
    settings = load_settings(overrides=overrides)
    setup_logging(settings.log_level, settings.log_format, "gateway")
    chat_model = None
    if demo:
        from gateway.cli.demo import prepare_demo, usage_text

        Path(settings.models_dir).mkdir(parents=True, exist_ok=True)
        preload = prepare_demo(Path(settings.models_dir), Path(settings.config_path))
        settings = msgspec.structs.replace(
            settings, preload=tuple(dict.fromkeys([*settings.preload, *preload]))
        )
        chat_model = preload[0]
    sock = bind_socket(settings.host, settings.port)
    url = public_url(settings.host, sock.getsockname()[1])
    banner = usage_text(url) if demo else serving_text(url)
    announce_when_ready(url, banner + cli_hint(chat_model), preload=settings.preload)
    app = create_app(settings)
    serve(
        app, sock, ready_prefix=GATEWAY_READY, log_level=settings.log_level, log_format=settings.log_format,
        grace_s=settings.shutdown_timeout_s, on_grace_over=app.state.streams.close_all,
    )
    return 0
