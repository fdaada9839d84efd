"""Per-key usage and limits at one gateway replica: requests and tokens per minute (sliding windows
over the last 60 s) and requests in flight. A refusal is a 429 with Retry-After; every answer to a
limited key carries OpenAI's `x-ratelimit-*` headers.

Counted per gateway replica, in its event loop (no locks: one thread owns them): with N replicas
behind a load balancer a key may use up to N times its limits.
"""

from __future__ import annotations

import math
import time
from collections import deque

from msgspec import Struct

from shared.errors import RateLimitExceededError

WINDOW_S = 60.0


class KeyLimits(Struct, kw_only=True, frozen=True):
    """A key's limits; None: unlimited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None

    @property
    def any(self) -> bool:
        limits = (self.requests_per_minute, self.tokens_per_minute, self.max_concurrent)
        return any(v is not None for v in limits)


class KeyUsage:
    """What one key used at this gateway (totals since start) and its windows for the limits."""

    __slots__ = (
        "_request_times",
        "_token_log",
        "_window_tokens",
        "completion_tokens",
        "in_flight",
        "limits",
        "name",
        "prompt_tokens",
        "rate_limited",
        "requests",
        "role",
    )

    def __init__(self, name: str, role: str, limits: KeyLimits) -> None:
        self.name, self.role, self.limits = name, role, limits
        self.requests = self.prompt_tokens = self.completion_tokens = self.in_flight = 0
        self.rate_limited: dict[str, int] = {"requests": 0, "tokens": 0, "concurrent": 0}
        self._request_times: deque[float] = deque()
        self._token_log: deque[tuple[float, int]] = deque()
        self._window_tokens = 0

    def admit(self, now: float | None = None) -> None:
        """Count one request in, or raise a 429 naming the limit it hit."""
        now = time.monotonic() if now is None else now
        self._forget(now)
        lim = self.limits
        if lim.max_concurrent is not None and self.in_flight >= lim.max_concurrent:
            self._refuse("concurrent", f"{lim.max_concurrent} requests in flight", 1, now)
        if lim.requests_per_minute is not None and len(self._request_times) >= lim.requests_per_minute:
            wait = self._request_times[0] + WINDOW_S - now
            self._refuse("requests", f"{lim.requests_per_minute} requests per minute", wait, now)
        if lim.tokens_per_minute is not None and self._window_tokens >= lim.tokens_per_minute:
            wait = self._tokens_free_in(now)
            self._refuse("tokens", f"{lim.tokens_per_minute} tokens per minute", wait, now)
        self.requests += 1
        self.in_flight += 1
        if lim.requests_per_minute is not None:
            self._request_times.append(now)

    def release(self) -> None:
        self.in_flight -= 1

    def charge(self, prompt_tokens: int, completion_tokens: int, now: float | None = None) -> None:
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        if self.limits.tokens_per_minute is not None:
            tokens = prompt_tokens + completion_tokens
            self._token_log.append((time.monotonic() if now is None else now, tokens))
            self._window_tokens += tokens

    def headers(self, now: float | None = None) -> list[tuple[bytes, bytes]]:
        """OpenAI's `x-ratelimit-*` headers for the limits this key has."""
        now = time.monotonic() if now is None else now
        lim, out = self.limits, []
        if lim.requests_per_minute is not None:
            reset = self._request_times[-1] + WINDOW_S - now if self._request_times else 0.0
            remaining = max(lim.requests_per_minute - len(self._request_times), 0)
            out += _triple("requests", lim.requests_per_minute, remaining, reset)
        if lim.tokens_per_minute is not None:
            reset = self._token_log[-1][0] + WINDOW_S - now if self._token_log else 0.0
            remaining = max(lim.tokens_per_minute - self._window_tokens, 0)
            out += _triple("tokens", lim.tokens_per_minute, remaining, reset)
        return out

    def _refuse(self, limit: str, what: str, wait_s: float, now: float) -> None:
        self.rate_limited[limit] += 1
        wait = max(math.ceil(wait_s), 1)
        raise RateLimitExceededError(
            f"rate limit reached for key {self.name!r}: {what} at this gateway; retry after {wait} s",
            retry_after=wait,
        )

    def _forget(self, now: float) -> None:
        start = now - WINDOW_S
        while self._request_times and self._request_times[0] <= start:
            self._request_times.popleft()
        while self._token_log and self._token_log[0][0] <= start:
            self._window_tokens -= self._token_log.popleft()[1]

    def _tokens_free_in(self, now: float) -> float:
        """Seconds until the window's tokens drop below the limit."""
        limit, left = self.limits.tokens_per_minute or 0, self._window_tokens
        for at, tokens in self._token_log:
            left -= tokens
            if left < limit:
                return at + WINDOW_S - now
        return 0.0


def _triple(kind: str, limit: int, remaining: int, reset_s: float) -> list[tuple[bytes, bytes]]:
    return [
        (f"x-ratelimit-limit-{kind}".encode(), str(limit).encode()),
        (f"x-ratelimit-remaining-{kind}".encode(), str(remaining).encode()),
        (f"x-ratelimit-reset-{kind}".encode(), duration(reset_s).encode()),
    ]


def duration(seconds: float) -> str:
    """OpenAI's reset format: `20ms`, `1s`, `1m0s`."""
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    whole = math.ceil(seconds)
    return f"{whole // 60}m{whole % 60}s" if whole >= 60 else f"{whole}s"
