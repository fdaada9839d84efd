"""GET /api/usage (admin): each named key's requests, tokens and 429s at this gateway replica."""

from __future__ import annotations

from litestar import get
from litestar.datastructures import State

from gateway.route_docs import answers
from gateway.schemas.usage import UsageList, usage_list


@get("/api/usage", opt=answers(), summary="Usage per API key (by name) at this gateway replica")
async def usage(state: State) -> UsageList:
    return usage_list(state.key_ring.usages())
