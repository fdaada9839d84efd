"""Who may call which route: decided on the route handler the router dispatched to, never on the raw
path (`//v1/models` and `/v1/models` reach the same handler, so they get the same answer).

Every route needs a key once any key is set, deny by default: a route says `opt=INFERENCE` to be
open to inference keys, the allowlist (`/health*`, `/metrics`, `/docs*`) is open to anyone, and
everything else needs an admin key. With no key set at all, everything is open (a local developer).
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

import msgspec
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from gateway.keys import KeyRing, admit_key
from gateway.schemas.models import LoadedModel
from shared.bearer_tokens import bearer_token
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

    def __init__(self, settings: Settings, keys: KeyRing | None = None) -> None:
        self.keys = keys if keys is not None else KeyRing.from_settings(settings)
        self.enabled = self.keys.enabled

    def role(
        self, authorization: str | None, api_key: str | None = None
    ) -> Literal["admin", "inference"] | None:
        # Anthropic's clients send the key as `x-api-key`; the bearer token wins when both are sent.
        # Every key is compared whatever its role, so timing does not tell the roles apart either.
        key = self.keys.match(bearer_token(authorization) or api_key or None)
        return key.role if key is not None else None

    # async: litestar runs a sync guard in its thread pool, a hand-off that cost more than the check.
    async def __call__(self, connection: Connection, handler: BaseRouteHandler) -> None:
        if not self.enabled:
            connection.scope[ADMIN_SCOPE_KEY] = True  # type: ignore[literal-required]
            return
        headers = connection.headers
        key = self.keys.match(bearer_token(headers.get("authorization")) or headers.get("x-api-key") or None)
        role = key.role if key is not None else None
        connection.scope[ADMIN_SCOPE_KEY] = role == "admin"  # type: ignore[literal-required]
        access = route_access(handler, connection.scope.get("path_template", ""))
        if access == "open":
            return
        if role is None:
            raise AuthenticationError(
                "Incorrect or missing API key: send `Authorization: Bearer <key>` (or `x-api-key: <key>`)"
            )
        if access == "admin" and role != "admin":
            raise PermissionDeniedError(
                "this route needs an admin key (DUKAT_ADMIN_KEYS); an inference key may not call it"
            )
        if key is not None:
            admit_key(connection.scope, key)  # its usage, and its limits (429)


def is_admin(scope: Any) -> bool:
    """Whether the request's caller may see admin details (pids, internal URLs, paths)."""
    return bool(scope.get(ADMIN_SCOPE_KEY, False))


def without_internals(row: LoadedModel, models_dir: Path) -> LoadedModel:
    """A loaded model as a non-admin sees it: no pid, no worker or host address, no log lines, no
    server path in its error."""
    error = without_paths(row.error, models_dir) if row.error is not None else None
    return msgspec.structs.replace(row, pid=None, address=None, host=None, log_tail=[], error=error)


def without_paths(text: str, models_dir: Path) -> str:
    """`text` as a non-admin sees it: a path into the models folder is the model's id (`cannot load
    the model in /srv/dukat/models/org/name` becomes `... in org/name`)."""
    for folder in sorted({str(models_dir.absolute()), str(models_dir.resolve())}, key=len, reverse=True):
        text = text.replace(folder + "/", "").replace(folder, "the models folder")
    return text
