"""Serving a model that has several replicas (workers on different hosts or devices).

A request goes to the replica with the fewest requests in flight (this gateway's count first, then
the hosts' count of all gateways, then the address, so ties break the same way everywhere). A
request whose replica fails before anything was sent to the client (unreachable, connection lost,
draining for an unload) is retried once on the next replica.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

from shared.errors import ModelNotLoadedError, WorkerFailedError
from shared.generation import EmbedRequest, EmbedResult, GenerateRequest, GenerateResult, SamplingParams
from shared.host_api import WorkerState
from shared.wire_client import WorkerConnection

log = logging.getLogger(__name__)
# Failures before the first byte that another replica may not have: the worker is gone or going.
RETRYABLE = (WorkerFailedError, ModelNotLoadedError)
Connect = Callable[[WorkerState], WorkerConnection]


def by_load(workers: list[WorkerState], connect: Connect) -> list[WorkerState]:
    """The loaded replicas, least busy first."""
    loaded = [w for w in workers if w.status == "loaded" and w.address]
    if len(loaded) < 2:
        return loaded
    return sorted(loaded, key=lambda w: (connect(w).in_flight, w.in_flight, w.address or ""))


def _tries(workers: list[WorkerState], connect: Connect) -> list[WorkerState]:
    order = by_load(workers, connect)[:2]
    if not order:
        raise ModelNotLoadedError("no replica of the model is loaded", param="model")
    return order


def _retrying(worker: WorkerState, exc: Exception, request_id: str) -> None:
    log.warning(
        "replica of %s at %s failed before its first byte (%s); retrying on another rid=%s",
        worker.model_id, worker.address, exc, request_id,
    )  # fmt: skip


async def generate(
    workers: list[WorkerState], connect: Connect, request: GenerateRequest, defaults: SamplingParams | None
) -> GenerateResult:
    tries = _tries(workers, connect)
    for i, worker in enumerate(tries):
        try:
            return await connect(worker).generate(request, defaults)
        except RETRYABLE as exc:
            if i == len(tries) - 1:
                raise
            _retrying(worker, exc, request.request_id)
    raise AssertionError("unreachable")


async def embed(workers: list[WorkerState], connect: Connect, request: EmbedRequest) -> EmbedResult:
    tries = _tries(workers, connect)
    for i, worker in enumerate(tries):
        try:
            return await connect(worker).embed(request)
        except RETRYABLE as exc:
            if i == len(tries) - 1:
                raise
            _retrying(worker, exc, request.request_id)
    raise AssertionError("unreachable")


def stream(
    workers: list[WorkerState], connect: Connect, request: GenerateRequest, defaults: SamplingParams | None
) -> AsyncIterator[str | GenerateResult]:
    tries = _tries(workers, connect)
    if len(tries) == 1:  # nothing to retry on: the worker's own stream, no extra hop per token
        return connect(tries[0]).stream(request, defaults)
    return _stream_with_retry(tries, connect, request, defaults)


async def _stream_with_retry(
    tries: list[WorkerState], connect: Connect, request: GenerateRequest, defaults: SamplingParams | None
) -> AsyncIterator[str | GenerateResult]:
    for i, worker in enumerate(tries):
        items = connect(worker).stream(request, defaults)
        try:
            first = await anext(items)
        except StopAsyncIteration:
            return
        except RETRYABLE as exc:
            await items.aclose()  # type: ignore[attr-defined]
            if i == len(tries) - 1:
                raise
            _retrying(worker, exc, request.request_id)
            continue
        try:
            yield first
            async for item in items:
                yield item
        finally:
            await items.aclose()  # type: ignore[attr-defined]
        return
