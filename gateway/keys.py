"""API keys with names: which key a bearer token is, and what each key used at this gateway.

Keys come from `DUKAT_API_KEYS` / `DUKAT_ADMIN_KEYS` (`name:secret` or a bare secret, named
`key-<8 hex of its sha256>`) and from the JSON keys file `DUKAT_KEYS_FILE` (a Secret the chart mounts),
whose entries may also carry limits. Only names ever leave this module (metrics, /api/usage, logs).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from gateway.rate_limits import KeyLimits, KeyUsage
from gateway.request_log import note
from shared.errors import SettingsError
from shared.settings import Settings

Role = Literal["inference", "admin"]
KeyName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
_NAMED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]{0,63}):(.+)$")
# The key of the request being served, so token counts reach it wherever the result comes back
# (streams, n choices, retries on another replica): set by the guard, read by the metrics observer.
CURRENT_KEY: ContextVar[KeyUsage | None] = ContextVar("dukat_current_key", default=None)
# Set on the request's ASGI scope: the key's usage to release at the end, the `x-ratelimit-*`
# headers the middleware adds to the answer.
LEASE_SCOPE_KEY = "dukat_key_lease"
HEADERS_SCOPE_KEY = "dukat_ratelimit_headers"


class KeyEntry(Struct, kw_only=True, forbid_unknown_fields=True):
    """One key of the keys file: its name (what metrics and /api/usage show), secret, role, limits."""

    name: KeyName
    key: Annotated[str, Meta(min_length=1)]
    role: Role = "inference"
    requests_per_minute: Annotated[int, Meta(ge=1)] | None = None
    tokens_per_minute: Annotated[int, Meta(ge=1)] | None = None
    max_concurrent: Annotated[int, Meta(ge=1)] | None = None


class KeysFile(Struct, kw_only=True, forbid_unknown_fields=True):
    keys: list[KeyEntry]


class Key:
    """A known key: its name, role and usage; the secret only as bytes to compare against."""

    __slots__ = ("name", "role", "secret", "usage")

    def __init__(self, name: str, secret: str, role: Role, limits: KeyLimits) -> None:
        self.name = name
        self.secret = secret.encode("utf-8", "surrogateescape")
        self.role: Role = role
        self.usage = KeyUsage(name, role, limits)


class KeyRing:
    """Every key this gateway knows, matched in constant time, with each key's usage and limits."""

    def __init__(self, keys: list[Key]) -> None:
        self.keys = keys
        self.enabled = bool(keys)

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        entries = [_from_env(raw, "inference") for raw in settings.api_keys]
        entries += [_from_env(raw, "admin") for raw in settings.admin_keys]
        if settings.keys_file is not None:
            entries += read_keys_file(settings.keys_file)
        _check_unique(entries)
        return cls([Key(e.name, e.key, e.role, _limits(e)) for e in entries])

    def match(self, token: str | None) -> Key | None:
        """The key whose secret is `token`; every key is compared, so timing tells nothing."""
        if token is None:
            return None
        given = token.encode("utf-8", "surrogateescape")
        found: Key | None = None
        for key in self.keys:
            if hmac.compare_digest(given, key.secret):
                found = key
        return found

    def usages(self) -> list[KeyUsage]:
        return [k.usage for k in self.keys]


def _from_env(raw: str, role: Role) -> KeyEntry:
    named = _NAMED.match(raw)
    if named:
        return KeyEntry(name=named.group(1), key=named.group(2), role=role)
    return KeyEntry(name="key-" + hashlib.sha256(raw.encode()).hexdigest()[:8], key=raw, role=role)


def read_keys_file(path: Path) -> list[KeyEntry]:
    """The keys file's entries; a missing or malformed file stops start-up naming DUKAT_KEYS_FILE."""
    try:
        return msgspec.json.decode(path.read_bytes(), type=KeysFile).keys
    except OSError as exc:
        message = f"DUKAT_KEYS_FILE {path} cannot be read: {exc.strerror}"
        raise SettingsError(message, param="DUKAT_KEYS_FILE") from None
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise SettingsError(f"DUKAT_KEYS_FILE {path}: {exc}", param="DUKAT_KEYS_FILE") from None


def _check_unique(entries: list[KeyEntry]) -> None:
    names: set[str] = set()
    secrets: set[str] = set()
    for e in entries:
        if e.name in names:
            raise SettingsError(f"the key name {e.name!r} is given twice", param="DUKAT_API_KEYS")
        if e.key in secrets:
            message = f"the key named {e.name!r} has the secret of another key"
            raise SettingsError(message, param="DUKAT_API_KEYS")
        names.add(e.name)
        secrets.add(e.key)


def _limits(e: KeyEntry) -> KeyLimits:
    return KeyLimits(
        requests_per_minute=e.requests_per_minute,
        tokens_per_minute=e.tokens_per_minute,
        max_concurrent=e.max_concurrent,
    )


def admit_key(scope: Any, key: Key) -> None:
    """A request of `key` starts: counted against its limits (or a 429), its tokens charged to it,
    its in-flight place released and its `x-ratelimit-*` headers sent by the middleware."""
    usage = key.usage
    note(key=key.name)
    try:
        usage.admit()
        scope[LEASE_SCOPE_KEY] = usage
        CURRENT_KEY.set(usage)
    finally:
        if usage.limits.any:
            scope[HEADERS_SCOPE_KEY] = usage.headers()


def release_key(scope: Any) -> None:
    """The request ended (its stream included): its key's in-flight place is free."""
    usage = scope.pop(LEASE_SCOPE_KEY, None)
    if usage is not None:
        usage.release()


def charge_current_key(prompt_tokens: int, completion_tokens: int) -> None:
    """Count a finished generation's tokens to the key of the request it belongs to, if any."""
    usage = CURRENT_KEY.get()
    if usage is not None:
        usage.charge(prompt_tokens, completion_tokens)
