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
from gateway.request_log import REQUEST_FIELDS, TRACE_CONTEXT
from shared.tracing import Tracing, carrier_of, end

log = logging.getLogger("gateway.access")


def request_id_of(scope: Any) -> str:
    return str(scope.get("dukat_request_id", ""))


class GatewayMiddleware:
    def __init__(
        self, app: Any, metrics: GatewayMetrics | None = None, tracing: Tracing | None = None
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.tracing = tracing if tracing is not None and tracing.enabled else None
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
        span = None
        if self.tracing is not None:  # a child of the client's trace, when it sent one
            span = self.tracing.start(f"{scope['method']} {scope['path']}", _trace_headers(headers))
            TRACE_CONTEXT.set(carrier_of(span))

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
            if span is not None:
                _end_span(span, scope, rid, status, fields)
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


def _trace_headers(headers: dict[bytes, bytes]) -> dict[str, str]:
    found = ((name, headers.get(name.encode())) for name in _TRACE_HEADERS)
    return {name: value.decode("latin-1") for name, value in found if value is not None}


_TRACE_HEADERS = ("traceparent", "tracestate")


def _end_span(span: Any, scope: dict[str, Any], rid: str, status: int, fields: dict[str, Any]) -> None:
    """The request's span, named for its route (OpenTelemetry's HTTP and GenAI attribute names)."""
    route = scope.get("path_template")
    if route:
        span.update_name(f"{scope['method']} {route}")
    attributes = {
        "http.request.method": scope["method"], "url.path": _printable(scope["path"]), "http.route": route,
        "http.response.status_code": status, "dukat.request_id": rid, "dukat.key": fields.get("key"),
        "gen_ai.request.model": fields.get("model"), "gen_ai.usage.input_tokens": fields.get("prompt_tokens"),
        "gen_ai.usage.output_tokens": fields.get("completion_tokens"),
    }  # fmt: skip
    end(span, attributes, error=f"HTTP {status}" if status >= 500 or status == 0 else None)


def _printable(text: str) -> str:
    """`text` with control characters and non-ASCII escaped: a decoded `%0a` in a path (or a header)
    must not start a new, forged line in the access log."""
    if text.isascii() and text.isprintable():
        return text
    return text.encode("unicode_escape").decode("ascii")
