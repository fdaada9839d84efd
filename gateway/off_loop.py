"""Work on a request that grows with its size, off the event loop once the request is large.

The loop only waits (ARCHITECTURE.md): turning a 50,000-item Responses input into messages takes a
quarter of a second, which every other client's request would wait for. Small requests stay on the
loop, where a thread hop would cost more than the work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Items (messages, input items, prompts) from which a request's preparation runs in a thread.
LARGE_ITEMS = 512


async def prepared(items: int, prepare: Callable[[], T]) -> T:
    """`prepare()`, in a thread when the request has `items` >= LARGE_ITEMS."""
    if items < LARGE_ITEMS:
        return prepare()
    return await asyncio.to_thread(prepare)
