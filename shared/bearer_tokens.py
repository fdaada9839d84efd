"""Bearer tokens and their constant-time compare: the gateway's API keys and the internal token that
gateway, worker hosts and model workers share (DUKAT_INTERNAL_TOKEN)."""

from __future__ import annotations

import hmac
from collections.abc import Iterable


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (the scheme in any case)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def token_in(token: str | None, keys: Iterable[bytes]) -> bool:
    """Constant time in the token and over every key: no early exit tells which one came close."""
    if token is None:
        return False
    given = token.encode("utf-8", "surrogateescape")
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key)
    return found


def bearer_header(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}
