"""Running an ASGI app under uvicorn + uvloop on a socket we bind ourselves, so port 0 works and the
parent learns the real port from one stdout line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shared.processes import announce_ready

log = logging.getLogger(__name__)


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
    # Not inheritable (Python's default, said here because it matters): uvloop's subprocesses keep
    # every inheritable fd, and a worker holding the host's port keeps it open after the host died.
    sock.set_inheritable(False)
    return sock


def serve(
    app: Any,
    sock: socket.socket,
    *,
    ready_prefix: str,
    log_level: str = "info",
    log_format: str = "text",
    grace_s: float = 5.0,
    on_grace_over: Callable[[], None] | None = None,
) -> None:
    """Serve `app` on `sock` until SIGTERM/SIGINT; prints `<ready_prefix> <port>` once bound.

    On the signal it stops accepting and lets requests in flight finish for `grace_s`; then
    `on_grace_over` runs (the gateway ends its streams with an error event and [DONE]) and, a moment
    later, what is still running is cancelled. A second Ctrl-C quits at once.
    """
    config = uvicorn.Config(
        app, loop="uvloop", http=_DeadlineProtocol, lifespan="on",
        log_level=log_level, access_log=False,
        # JSON logs: uvicorn's loggers reach our JSON handler instead of its own text ones.
        log_config=None if log_format == "json" else uvicorn.config.LOGGING_CONFIG,
        timeout_graceful_shutdown=math.ceil(grace_s + (_LAST_WORDS_S if on_grace_over else 0)),
        # Nothing here reads client addresses or advertises the server: skip that work per request.
        proxy_headers=False, server_header=False,
    )
    server = _Server(config, grace_s, on_grace_over)
    announce_ready(ready_prefix, sock.getsockname()[1])
    server.run(sockets=[sock])


# A request's head (request line and headers) must arrive this long after the connection opens or
# the request begins: uvicorn times out idle connections only after a first response (1,000 idle and
# 200 slowloris connections stayed open). Its keep-alive timeout (5 s) covers idle ones after that.
_HEAD_DEADLINE_S = 10.0


class _DeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing a connection whose request head is late."""

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        _bound_unsent(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(_HEAD_DEADLINE_S, self._late)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _late(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()


# Bytes of a response the kernel holds unsent per connection (TCP_NOTSENT_LOWAT): past them, a client
# that does not read holds back the stream's writer instead of the kernel buffering megabytes for it
# (loopback's send buffer grew to 3 MB: ~12,000 events made for nobody), so back-pressure reaches
# the model worker (shared/wire_client.py).
_UNSENT_BYTES = 64 * 1024
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", None)


def _bound_unsent(transport: asyncio.Transport) -> None:
    sock = transport.get_extra_info("socket")
    if _TCP_NOTSENT_LOWAT is not None and sock is not None and sock.family != socket.AF_UNIX:
        with contextlib.suppress(OSError):  # not supported there: unbounded as before
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, _UNSENT_BYTES)


# What streams get, after the grace period, to send their last event before they are cancelled.
_LAST_WORDS_S = 2.0


class _Server(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, grace_s: float, on_grace_over: Callable[[], None] | None
    ) -> None:
        super().__init__(config)
        self.grace_s = grace_s
        self.on_grace_over = on_grace_over

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        timer = None
        if self.on_grace_over is not None:
            log.info("shutting down: requests in flight have %.0f s to finish", self.grace_s)
            timer = asyncio.get_running_loop().call_later(self.grace_s, self.on_grace_over)
        try:
            await super().shutdown(sockets)
        finally:
            if timer is not None:
                timer.cancel()
