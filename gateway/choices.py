"""Running the n choices (and, for completions, the prompts) of one request on a model worker.

A request's generations are admitted together or refused together before any work starts: the
worker gives the group its places at once (else a 429 whose Retry-After comes from its queue), and
the group keeps them to its end; a group larger than the worker runs in waves of those places.
When one generation fails, the others are cancelled (their workers stop generating) and its error
is raised.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from gateway.manager import AsyncModelManager
from gateway.prefix_routing import prefix_key
from gateway.schemas import ChoiceEvent
from shared.generation import GenerateRequest, GenerateResult, SamplingParams, StreamItem
from shared.wire_client import WorkerConnection

# Events of the n streams merged and not yet taken by the response (each stream buffers its own).
_BUFFER_EVENTS = 64


async def generate_all(
    manager: AsyncModelManager, model: str | None, requests: list[GenerateRequest]
) -> tuple[str, list[GenerateResult]]:
    """Every request's result, in order; they run concurrently so the worker can batch them."""
    manager.dispatch.with_keep_alive(model, requests)
    if len(requests) == 1:
        mid, result = await manager.dispatch.generate(model, requests[0])
        return mid, [result]

    async def group(conn: WorkerConnection, defaults: SamplingParams | None) -> list[GenerateResult]:
        ticket, places = await conn.admit(len(requests))
        slots = asyncio.Semaphore(places)

        async def one(request: GenerateRequest) -> GenerateResult:
            async with slots:
                return await conn.generate(request, defaults, ticket)

        try:
            return await _all_or_none([one(r) for r in requests])
        finally:
            conn.release(ticket)

    return await manager.dispatch.on_worker(model, group, prefix=prefix_key(requests[0]), requests=requests)


async def _all_or_none(awaitables: list[Awaitable[GenerateResult]]) -> list[GenerateResult]:
    """`asyncio.gather`, but the first failure cancels the rest instead of leaving them running."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def stream_all(
    manager: AsyncModelManager, model: str | None, requests: list[GenerateRequest]
) -> tuple[str, AsyncIterator[ChoiceEvent]]:
    """The interleaved events `(choice index, delta | final result)` of every request."""
    manager.dispatch.with_keep_alive(model, requests)
    if len(requests) == 1:
        mid, stream = await manager.dispatch.stream(model, requests[0])
        return mid, _indexed(0, stream)

    async def admit(
        conn: WorkerConnection, defaults: SamplingParams | None
    ) -> tuple[WorkerConnection, SamplingParams | None, tuple[int, int]]:
        return conn, defaults, await conn.admit(len(requests))  # before the stream: a refusal is a 429

    mid, (conn, defaults, (ticket, places)) = await manager.dispatch.on_worker(
        model, admit, prefix=prefix_key(requests[0]), requests=requests
    )
    streams = [conn.stream(r, defaults, ticket) for r in requests]
    return mid, _merged(streams, places, lambda: conn.release(ticket))


async def _indexed(index: int, stream: AsyncIterator[StreamItem]) -> AsyncIterator[ChoiceEvent]:
    try:
        async for event in stream:
            yield index, event
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


async def _merged(
    streams: list[AsyncIterator[StreamItem]], at_once: int, release: Callable[[], None]
) -> AsyncIterator[ChoiceEvent]:
    # Bounded: a client that reads slowly holds back the streams (back-pressure, shared/wire_client.py).
    queue: asyncio.Queue[ChoiceEvent | BaseException | None] = asyncio.Queue(_BUFFER_EVENTS)
    slots = asyncio.Semaphore(at_once)

    async def pump(index: int, stream: AsyncIterator[StreamItem]) -> None:
        try:
            async with slots:  # a stream sends its request on its first iteration
                async for event in _indexed(index, stream):
                    await queue.put(event)
            await queue.put(None)
        except Exception as exc:
            await queue.put(exc)

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, return_exceptions=True)
        release()  # the places of streams that never started
