"""Probes and metrics for the cluster around the gateway: Kubernetes' liveness and readiness, and
Prometheus' scrape. Outside /v1 and /api, so API keys don't guard them (keep them in-cluster)."""

from __future__ import annotations

from litestar import Response, get
from litestar.datastructures import State

from gateway.metrics import CONTENT_TYPE


@get("/health/live", summary="Liveness: the gateway's event loop answers")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@get("/health/ready", summary="Readiness: a worker host answers and the preload list is loaded")
async def ready(state: State) -> Response[dict[str, str]]:
    reason = None
    if not state.preloaded:
        reason = "preloading models"
    elif not await state.manager.hosts.states():
        reason = "no worker host answers"
    if reason is not None:
        return Response({"status": "not_ready", "reason": reason}, status_code=503)
    return Response({"status": "ready"}, status_code=200)


@get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(state: State) -> Response[bytes]:
    manager = state.manager
    hosts = await manager.hosts.states()
    body = state.metrics.render(hosts, manager.hosts.urls, await manager.in_flight())
    return Response(body, media_type=CONTENT_TYPE)
