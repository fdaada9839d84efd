"""GET /api/usage: what each named key used at the gateway replica that answers."""

from __future__ import annotations

from typing import Literal

from msgspec import Struct

from gateway.rate_limits import KeyLimits, KeyUsage


class RateLimited(Struct, kw_only=True):
    """Requests refused with 429 by each of the key's limits."""

    requests: int
    tokens: int
    concurrent: int


class KeyUsageRow(Struct, kw_only=True):
    key: str  # the key's name, never its secret
    role: Literal["inference", "admin"]
    requests: int
    prompt_tokens: int
    completion_tokens: int
    in_flight: int
    rate_limited: RateLimited
    limits: KeyLimits


class UsageList(Struct, kw_only=True):
    object: Literal["list"] = "list"
    # Figures are this gateway replica's since it started: sum them over replicas (or use the metrics).
    scope: Literal["gateway_replica"] = "gateway_replica"
    data: list[KeyUsageRow]


def usage_list(usages: list[KeyUsage]) -> UsageList:
    return UsageList(
        data=[
            KeyUsageRow(
                key=u.name,
                role="admin" if u.role == "admin" else "inference",
                requests=u.requests,
                prompt_tokens=u.prompt_tokens,
                completion_tokens=u.completion_tokens,
                in_flight=u.in_flight,
                rate_limited=RateLimited(**u.rate_limited),
                limits=u.limits,
            )
            for u in usages
        ]
    )
