"""Running an ASGI app under uvicorn + uvloop on a socket we bind ourselves, so port 0 works and the
parent learns the real port from one stdout line."""

from __future__ import annotations

import socket
from typing import Any

import uvicorn


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        # Named, so `dukat` can say which address is taken in one line.
        raise OSError(exc.errno, exc.strerror, f"{host}:{port}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(app: Any, sock: socket.socket, *, ready_prefix: str, log_level: str = "info") -> None:
    """Serve `app` on `sock` until SIGTERM/SIGINT; prints `<ready_prefix> <port>` once bound."""
    config = uvicorn.Config(
        app, loop="uvloop", http="httptools", lifespan="on",
        log_level=log_level, access_log=False, timeout_graceful_shutdown=5,
        # Nothing here reads client addresses or advertises the server: skip that work per request.
        proxy_headers=False, server_header=False,
    )
    server = uvicorn.Server(config)
    print(f"{ready_prefix} {sock.getsockname()[1]}", flush=True)
    server.run(sockets=[sock])

