"""ASGI middleware of the gateway: request ids and one log line per request.

Plain ASGI (not litestar's middleware classes) because it runs on every request, unknown routes
included: it only looks at headers and wraps `send` to add `X-Request-Id`. Authentication is not
here: it is decided on the route the router dispatches to (gateway/auth.py).
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.metrics import GatewayMetrics

from gateway.keys import HEADERS_SCOPE_KEY, release_key
from gateway.request_log import REQUEST_FIELDS

log = logging.getLogger("gateway.access")


def request_id_of(scope: Any) -> str:
    return str(scope.get("dukat_request_id", ""))


class GatewayMiddleware:
    def __init__(self, app: Any, metrics: GatewayMetrics | None = None) -> None:
        self.app = app
        self.metrics = metrics
        # Unique across replicas and restarts without a random draw per request.
        self._prefix = secrets.token_hex(4)
        self._ids = itertools.count(1)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        rid = _printable(headers.get(b"x-request-id", b"").decode("latin-1")[:128]) or (
            f"req-{self._prefix}{next(self._ids):x}"
        )
        scope["dukat_request_id"] = rid
        started = time.perf_counter()
        status = 0
        first_byte_s = 0.0
        fields: dict[str, Any] = {"model": None, "key": None}
        REQUEST_FIELDS.set(fields)

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status, first_byte_s
            if message["type"] == "http.response.start":
                status = message["status"]
                first_byte_s = time.perf_counter() - started
                extra = [(b"x-request-id", rid.encode("latin-1")), *scope.get(HEADERS_SCOPE_KEY, ())]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            release_key(scope)
            if self.metrics is not None:  # litestar's router set the template; none: no route
                self.metrics.answered(scope["method"], scope.get("path_template") or "unmatched", status)
            if log.isEnabledFor(logging.INFO):
                elapsed_ms = (time.perf_counter() - started) * 1000
                path = _printable(scope["path"])
                # The structured fields: what a JSON log line carries (DUKAT_LOG_FORMAT=json).
                extra = {
                    "request_id": rid, "method": scope["method"], "path": path, "status": status,
                    "duration_ms": round(elapsed_ms, 1), "first_byte_ms": round(first_byte_s * 1000, 1),
                    **fields,
                }  # fmt: skip
                method = scope["method"]
                log.info("%s %s %s %.1fms rid=%s", method, path, status, elapsed_ms, rid, extra=extra)


def _printable(text: str) -> str:
    """`text` with control characters and non-ASCII escaped: a decoded `%0a` in a path (or a header)
    must not start a new, forged line in the access log."""
    if text.isascii() and text.isprintable():
        return text
    return text.encode("unicode_escape").decode("ascii")
