"""How a request reaches a model worker: the connections, the replica it goes to, its one retry.

A request goes to the loaded replica with the fewest requests in flight (this gateway's count first,
then the hosts' count of all gateways, then the address, so ties break the same way everywhere), or,
for a long prompt, to its prefix's home replica while that one is not much busier
(gateway/prefix_routing.py). A
request that fails before anything was sent to the client (unreachable, connection lost, draining
for an unload) is retried once: on the next replica, or, when its model has one worker and that one
cannot be reached (it died between requests), on the worker its host restarts in its place.

Which replicas exist, and loading them when a request needs one, is a `Replicas` source's job (the
manager, gateway/manager.py, which owns a Dispatcher and hands it requests); the n-choice fan-out
(gateway/choices.py) runs on `Dispatcher.on_worker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

from gateway import prefix_routing
from gateway.metrics import GatewayMetrics
from gateway.request_log import TRACE_CONTEXT
from shared.errors import DukatError, ModelNotLoadedError, WorkerFailedError, WorkerUnreachableError
from shared.generation import (
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    GenerateResult,
    SamplingParams,
    ScoreRequest,
    ScoreResult,
    StreamItem,
)
from shared.host_api import HostState, WorkerState
from shared.settings import Settings
from shared.wire import Tokens
from shared.wire_client import WorkerConnection

if TYPE_CHECKING:
    from gateway.hosts import HostDirectory

log = logging.getLogger(__name__)
T = TypeVar("T")
# Failures before the first byte that another replica may not have: the worker is gone or going.
RETRYABLE = (WorkerFailedError, ModelNotLoadedError)


class WorkerConnections:
    """This gateway's connections to the model workers, one per worker address, made on first use."""

    def __init__(self, settings: Settings, token: str | None, metrics: GatewayMetrics | None) -> None:
        self.settings = settings
        self.token = token
        self.metrics = metrics
        self._open: dict[str, WorkerConnection] = {}

    def to(self, worker: WorkerState) -> WorkerConnection:
        address = worker.address or ""
        conn = self._open.get(address)
        if conn is None:
            s = self.settings
            conn = self._open[address] = WorkerConnection(
                address,
                token=self.token,
                request_timeout_s=s.request_timeout_s,
                first_token_timeout_s=s.first_token_timeout_s,
                stream_buffer_events=s.stream_buffer_events,
                stream_stall_timeout_s=s.stream_stall_timeout_s,
                observer=self.metrics.for_model(worker.model_id) if self.metrics else None,
            )
        return conn

    def in_flight(self, hosts: list[HostState]) -> dict[str, int]:
        """Requests this gateway has on each model's workers."""
        counts: dict[str, int] = {}
        models = {w.address: w.model_id for h in hosts for w in h.models}
        for address, conn in self._open.items():
            model_id = models.get(address)
            if model_id is not None:
                counts[model_id] = counts.get(model_id, 0) + conn.in_flight
        return counts

    async def drop(self, worker: WorkerState) -> None:
        """Close the connection to a worker that is gone (unloaded)."""
        conn = self._open.pop(worker.address or "", None)
        if conn is not None:
            await conn.close()

    async def close(self) -> None:
        conns, self._open = list(self._open.values()), {}
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)

    def by_load(self, workers: list[WorkerState], prefix: str | None = None) -> list[WorkerState]:
        """The loaded replicas, least busy first (all of `workers` when none is loaded with an address);
        with a `prefix` key, its home replica first unless it has over SLACK more in flight."""
        loaded = [w for w in workers if w.status == "loaded" and w.address]
        if len(loaded) < 2:
            return loaded or workers
        ordered = sorted(loaded, key=lambda w: (self.to(w).in_flight, w.in_flight, w.address or ""))
        if prefix is None:
            return ordered
        address = prefix_routing.home(prefix, [w.address or "" for w in loaded])
        first = next(w for w in loaded if w.address == address)
        if self.to(first).in_flight > self.to(ordered[0]).in_flight + prefix_routing.SLACK:
            return ordered
        return [first, *(w for w in ordered if w is not first)]


def adapt(mid: str, workers: list[WorkerState], requests: Sequence[GenerateRequest]) -> None:
    """`mid` served by another model's workers is a LoRA adapter of that base: the requests say so.
    They carry the request's trace context too (the worker's span is a child of the gateway's)."""
    adapter = mid if workers and workers[0].model_id != mid else None
    trace_context = TRACE_CONTEXT.get()
    for request in requests:
        request.adapter = adapter
        request.trace_context = trace_context


class Replicas(Protocol):
    """Where a request's workers come from (the manager): found, or loaded first."""

    async def ready_workers(
        self, model_id: str | None, request_id: str = ""
    ) -> tuple[str, list[WorkerState]]: ...

    def defaults_for(self, model_id: str) -> SamplingParams | None: ...

    def resolve_id(self, model_id: str | None) -> str: ...

    def keep_alive_for(self, model_id: str) -> float | None: ...


class Dispatcher:
    """Sends requests to model workers. Owns this gateway's worker connections; reads replicas from
    `replicas` and failures back into the host directory. Must not load or unload models itself."""

    def __init__(
        self, settings: Settings, hosts: HostDirectory, replicas: Replicas, metrics: GatewayMetrics | None
    ) -> None:
        self.settings = settings
        self.hosts = hosts
        self.replicas = replicas
        self.connections = WorkerConnections(settings, hosts.token, metrics)

    async def on_worker(
        self,
        model_id: str | None,
        call: Callable[[WorkerConnection, SamplingParams | None], Awaitable[T]],
        request_id: str = "",
        prefix: str | None = None,
        requests: Sequence[GenerateRequest] = (),
    ) -> tuple[str, T]:
        """`call(connection, the model's default parameters)` on the least busy replica of `model_id` (or
        the default model); once more elsewhere (see the module's docstring) when it failed before
        anything was sent. `requests` run a LoRA adapter's rows when `model_id` names one."""
        mid, workers = await self.replicas.ready_workers(model_id, request_id)
        adapt(mid, workers, requests)
        defaults = self.replicas.defaults_for(mid)
        order = self.connections.by_load(workers, prefix)
        with self._seeing_failures():
            try:
                return mid, await call(self.connections.to(order[0]), defaults)
            except RETRYABLE as exc:
                other = await self._other(mid, order, exc, request_id)
            return mid, await call(self.connections.to(other), defaults)

    def with_keep_alive(self, model_id: str | None, requests: list[GenerateRequest]) -> None:
        """Requests that say no keep_alive get their model's config entry's, read now: an edit of the
        file applies to a model already loaded, from its next request on (the worker keeps the last)."""
        if all(r.keep_alive is not None for r in requests):
            return
        keep_alive = self.replicas.keep_alive_for(self.replicas.resolve_id(model_id))
        for request in requests:
            if request.keep_alive is None:
                request.keep_alive = keep_alive

    async def generate(self, model_id: str | None, request: GenerateRequest) -> tuple[str, GenerateResult]:
        self.with_keep_alive(model_id, [request])
        return await self.on_worker(
            model_id,
            lambda conn, defaults: conn.generate(request, defaults),
            request.request_id,
            prefix_routing.prefix_key(request),
            [request],
        )

    async def stream(
        self, model_id: str | None, request: GenerateRequest
    ) -> tuple[str, AsyncIterator[StreamItem]]:
        """The model's id and its stream of text deltas, then the final result. Picking the worker (and
        loading the model) happens here; the request is sent on the stream's first iteration."""
        self.with_keep_alive(model_id, [request])
        mid, workers = await self.replicas.ready_workers(model_id, request.request_id)
        adapt(mid, workers, [request])
        return mid, self._stream(mid, workers, request)

    async def embed(
        self, model_id: str | None, inputs: list[str] | list[list[int]], keep_alive: float | None = None
    ) -> tuple[str, EmbedResult]:
        if keep_alive is None:  # the config entry's, as for generations
            keep_alive = self.replicas.keep_alive_for(self.replicas.resolve_id(model_id))
        request = EmbedRequest(inputs=[*inputs], keep_alive=keep_alive)
        return await self.on_worker(model_id, lambda conn, _: conn.embed(request))

    async def score(
        self, model_id: str | None, pairs: list[tuple[str, str]], keep_alive: float | None = None
    ) -> tuple[str, ScoreResult]:
        """A cross-encoder's relevance score of each (query, document) pair."""
        request = ScoreRequest(pairs=pairs, keep_alive=keep_alive)
        return await self.on_worker(model_id, lambda conn, _: conn.score(request))

    async def tokenize(
        self,
        model_id: str | None,
        request: GenerateRequest,
        *,
        add_generation_prompt: bool = True,
        add_special_tokens: bool | None = None,
    ) -> tuple[str, Tokens]:
        """The model's id and `request`'s prompt as its token ids (see shared/wire.py's `Tokenize`)."""

        def call(conn: WorkerConnection, _: SamplingParams | None) -> Awaitable[Tokens]:
            return conn.tokenize(
                request, add_generation_prompt=add_generation_prompt, add_special_tokens=add_special_tokens
            )

        return await self.on_worker(model_id, call, request.request_id, requests=[request])

    async def detokenize(self, model_id: str | None, tokens: list[int]) -> tuple[str, str]:
        return await self.on_worker(model_id, lambda conn, _: conn.detokenize(tokens))

    async def _stream(
        self, mid: str, workers: list[WorkerState], request: GenerateRequest
    ) -> AsyncIterator[StreamItem]:
        defaults = self.replicas.defaults_for(mid)
        order = self.connections.by_load(workers, prefix_routing.prefix_key(request))
        stream = self.connections.to(order[0]).stream(request, defaults)
        try:
            with self._seeing_failures():
                try:
                    first = await anext(stream)
                except RETRYABLE as exc:  # nothing was sent: another replica may have it
                    await stream.aclose()  # type: ignore[attr-defined]
                    other = await self._other(mid, order, exc, request.request_id)
                    stream = self.connections.to(other).stream(request, defaults)
                    first = await anext(stream)
                yield first
                async for item in stream:
                    yield item
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    @contextlib.contextmanager
    def _seeing_failures(self) -> Iterator[None]:
        """A worker that failed mid-request is news: the next request asks the hosts again."""
        try:
            yield
        except WorkerFailedError:
            self.hosts.invalidate()
            raise

    async def _other(
        self, model_id: str, order: list[WorkerState], exc: DukatError, request_id: str
    ) -> WorkerState:
        """Where a request that failed on `order[0]` before its first byte goes: the next replica,
        else (the worker is gone) its replacement; else `exc` stands."""
        if len(order) > 1:
            log.warning(
                "replica of %s at %s failed before its first byte (%s); retrying on another rid=%s",
                model_id, order[0].address, exc, request_id,
            )  # fmt: skip
            return order[1]
        if isinstance(exc, WorkerUnreachableError):
            return await self._replacement(model_id, order[0])
        raise exc

    async def _replacement(self, model_id: str, gone: WorkerState) -> WorkerState:
        """The worker serving `model_id` now that `gone` cannot be reached: the one its host restarts
        (waiting for its load), or a fresh load. The host notices a death at once; a worker it
        still reports within DUKAT_HOST_STATE_TIMEOUT_S is alive, and unreachable for another reason."""
        polls = 20
        for _ in range(polls):
            found = await self.hosts.find(model_id, fresh=True)
            if found is None or found[1].status != "loaded" or found[1].address != gone.address:
                return (await self.replicas.ready_workers(model_id))[1][0]
            await asyncio.sleep(self.settings.host_state_timeout_s / polls)
        raise WorkerUnreachableError(f"the model worker of {model_id!r} at {gone.address} cannot be reached")
