"""Running the n choices (and, for completions, the prompts) of one request on a model worker.

A request's generations run at most `max_batch` at a time: a large `n` (or a long prompt list)
then queues behind itself instead of overflowing the worker's queue with a 429 no retry can fix.
When one fails, the others are cancelled (their workers stop generating) and its error is raised.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable

from gateway.manager import AsyncModelManager
from gateway.schemas import ChoiceEvent
from shared.generation import GenerateRequest, GenerateResult


async def generate_all(
    manager: AsyncModelManager, model: str | None, requests: list[GenerateRequest]
) -> tuple[str, list[GenerateResult]]:
    """Every request's result, in order; they run concurrently so the worker can batch them."""
    if len(requests) == 1:
        mid, result = await manager.generate_request(model, requests[0])
        return mid, [result]
    mid, _ = await manager.ready_worker(model)  # load once, not n times concurrently
    slots = asyncio.Semaphore(manager.settings.max_batch)

    async def one(request: GenerateRequest) -> GenerateResult:
        async with slots:
            return (await manager.generate_request(mid, request))[1]

    return mid, await _all_or_none([one(r) for r in requests])


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
    if len(requests) == 1:
        mid, stream = await manager.stream_request(model, requests[0])
        return mid, _indexed(0, stream)
    mid, _ = await manager.ready_worker(model)
    streams = [(await manager.stream_request(mid, r))[1] for r in requests]
    return mid, _merged(streams, manager.settings.max_batch)


async def _indexed(index: int, stream: AsyncIterator[str | GenerateResult]) -> AsyncIterator[ChoiceEvent]:
    try:
        async for event in stream:
            yield index, event
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


async def _merged(
    streams: list[AsyncIterator[str | GenerateResult]], at_once: int
) -> AsyncIterator[ChoiceEvent]:
    queue: asyncio.Queue[ChoiceEvent | BaseException | None] = asyncio.Queue()
    slots = asyncio.Semaphore(at_once)

    async def pump(index: int, stream: AsyncIterator[str | GenerateResult]) -> None:
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
