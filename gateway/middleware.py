"""ASGI middleware of the gateway: request ids, API-key auth and one log line per request.

Plain ASGI (not litestar's middleware classes) because it runs on every request: it only looks at
headers and wraps `send` to add `X-Request-Id`.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from typing import Any

import msgspec

from shared.errors import AuthenticationError

log = logging.getLogger("gateway.access")
_PROTECTED = ("/v1/", "/api/")


def request_id_of(scope: Any) -> str:
    return str(scope.get("dukat_request_id", ""))


class GatewayMiddleware:
    def __init__(self, app: Any, api_keys: tuple[str, ...]) -> None:
        self.app = app
        self.api_keys = {f"Bearer {k}".encode() for k in api_keys}
        # Unique across replicas and restarts without a random draw per request.
        self._prefix = secrets.token_hex(4)
        self._ids = itertools.count(1)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        rid = (
            headers.get(b"x-request-id", b"").decode("latin-1")[:128]
            or f"req-{self._prefix}{next(self._ids):x}"
        )
        scope["dukat_request_id"] = rid
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        try:
            if (
                self.api_keys
                and scope["path"].startswith(_PROTECTED)
                and headers.get(b"authorization") not in self.api_keys
            ):
                await _reject(send_with_id, AuthenticationError("Incorrect or missing API key"))
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "%s %s %s %.1fms rid=%s",
                    scope["method"],
                    scope["path"],
                    status,
                    (time.perf_counter() - started) * 1000,
                    rid,
                )


async def _reject(send: Any, err: AuthenticationError) -> None:
    body = msgspec.json.encode(err.body())
    await send(
        {
            "type": "http.response.start",
            "status": err.status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
