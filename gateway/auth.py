"""Who may call which route: decided on the route handler the router dispatched to, never on the raw
path (`//v1/models` and `/v1/models` reach the same handler, so they get the same answer).

Every route needs a key once any key is set, deny by default: a route says `opt=INFERENCE` to be
open to inference keys, the allowlist (`/health*`, `/metrics`, `/docs*`) is open to anyone, and
everything else needs an admin key. With no key set at all, everything is open (a local developer).
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any, Literal

import msgspec
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from gateway.schemas.models import LoadedModel
from shared.bearer_tokens import bearer_token, token_in
from shared.errors import AuthenticationError, PermissionDeniedError
from shared.settings import Settings

Access = Literal["open", "inference", "admin"]
# A route handler's `opt`: open to inference keys (admin keys may call everything).
INFERENCE: dict[str, Any] = {"access": "inference"}
# Route templates anyone may call, keys or not.
OPEN_ROUTES = ("/health", "/health/*", "/metrics", "/docs", "/docs/*")
# Set on the connection's scope by the guard: whether the caller holds an admin key.
ADMIN_SCOPE_KEY = "dukat_admin"


def route_access(handler: BaseRouteHandler, path_template: str) -> Access:
    """The access a route needs; anything not marked or allowlisted is admin-only."""
    marked = handler.opt.get("access")
    if marked in ("open", "inference", "admin"):
        return marked
    if any(fnmatchcase(path_template, pattern) for pattern in OPEN_ROUTES):
        return "open"
    if set(getattr(handler, "http_methods", ())) == {"OPTIONS"}:
        return "inference"  # litestar's automatic OPTIONS answer: the route's methods, no data
    return "admin"


Connection = ASGIConnection[Any, Any, Any, Any]


class KeyGuard:
    """A litestar guard (`Litestar(guards=[KeyGuard(settings)])`): 401 without a valid key, 403 for an
    inference key on an admin route."""

    def __init__(self, settings: Settings) -> None:
        self.inference_keys = tuple(k.encode() for k in settings.api_keys)
        self.admin_keys = tuple(k.encode() for k in settings.admin_keys)
        self.enabled = bool(self.inference_keys or self.admin_keys)

    def role(self, authorization: str | None) -> Literal["admin", "inference"] | None:
        token = bearer_token(authorization)
        # Both compares always run, so timing does not tell the roles apart either.
        admin, inference = token_in(token, self.admin_keys), token_in(token, self.inference_keys)
        return "admin" if admin else "inference" if inference else None

    # async: litestar runs a sync guard in its thread pool, a hand-off that cost more than the check.
    async def __call__(self, connection: Connection, handler: BaseRouteHandler) -> None:
        if not self.enabled:
            connection.scope[ADMIN_SCOPE_KEY] = True  # type: ignore[literal-required]
            return
        role = self.role(connection.headers.get("authorization"))
        connection.scope[ADMIN_SCOPE_KEY] = role == "admin"  # type: ignore[literal-required]
        access = route_access(handler, connection.scope.get("path_template", ""))
        if access == "open":
            return
        if role is None:
            raise AuthenticationError("Incorrect or missing API key: send `Authorization: Bearer <key>`")
        if access == "admin" and role != "admin":
            raise PermissionDeniedError(
                "this route needs an admin key (DUKAT_ADMIN_KEYS); an inference key may not call it"
            )


def is_admin(scope: Any) -> bool:
    """Whether the request's caller may see admin details (pids, internal URLs, paths)."""
    return bool(scope.get(ADMIN_SCOPE_KEY, False))


def without_internals(row: LoadedModel) -> LoadedModel:
    """A loaded model as a non-admin sees it: no pid, no worker or host address, no log lines (paths)."""
    return msgspec.structs.replace(row, pid=None, address=None, host=None, log_tail=[])
