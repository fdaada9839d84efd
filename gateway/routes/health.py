"""Probes and metrics for the cluster around the gateway: Kubernetes' liveness and readiness, and
Prometheus' scrape. Outside /v1 and /api, so API keys don't guard them (keep them in-cluster)."""

from __future__ import annotations

from litestar import Response, get
from litestar.datastructures import State
from msgspec import Struct

from gateway.metrics import CONTENT_TYPE
from gateway.route_docs import answers
from shared.errors import ModelNotLoadedError, NoCapacityError


class Probe(Struct, kw_only=True, omit_defaults=True):
    status: str  # "ok" (live) or "ready"
    # Ready still, on the last good config, while an edit has broken the config file.
    config_error: str | None = None


@get("/health/live", opt=answers(), summary="Liveness: the gateway's event loop answers")
async def live() -> Probe:
    return Probe(status="ok")


@get(
    "/health/ready",
    opt=answers(503),
    summary="Readiness: a worker host answers and the preload list is loaded (else 503)",
)
async def ready(state: State) -> Probe:
    if not state.preloaded:
        raise ModelNotLoadedError("not ready: the preload list is still loading")
    # A gateway that holds requests for capacity (DUKAT_CAPACITY_WAIT_S) is ready with no host up: its
    # hosts may be scaled to zero, and only requests reaching it bring them back.
    if not await state.manager.hosts.states() and not state.settings.capacity_wait_s:
        raise NoCapacityError("not ready: no worker host answers")
    return Probe(status="ready", config_error=state.manager.config.problem)


@get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(state: State) -> Response[bytes]:
    manager = state.manager
    hosts = await manager.hosts.states()
    body = state.metrics.render(hosts, manager.hosts.urls, await manager.in_flight())
    return Response(body, media_type=CONTENT_TYPE)
