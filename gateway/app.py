"""The gateway's app factory: routes, error handlers, middleware and the model manager's lifespan."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.datastructures import State

from gateway.auth import KeyGuard
from gateway.disconnect import CancelOnDisconnect
from gateway.docs_page import assets_router, openapi_config
from gateway.errors import exception_handlers
from gateway.intake import Intake
from gateway.keys import KeyRing
from gateway.limits import LimitedRequest
from gateway.manager import AsyncModelManager
from gateway.metrics import GatewayMetrics
from gateway.metrics_keys import KeysCollector
from gateway.middleware import GatewayMiddleware
from gateway.openapi import publish_truthful_openapi
from gateway.routes import (
    chat,
    completions,
    embeddings,
    health,
    management,
    messages,
    model_admin,
    models,
    rerank,
    responses,
    tokenize,
    usage,
)
from gateway.sse import StreamControl
from shared.errors import DukatError
from shared.settings import Settings
from shared.tracing import Tracing

log = logging.getLogger(__name__)

ROUTES = [
    chat.chat_completions,
    completions.completions,
    responses.create_response,
    responses.retrieve_response,
    embeddings.embeddings,
    messages.create_message,
    messages.count_tokens,
    rerank.rerank_v1,
    rerank.rerank_v2,
    rerank.score,
    tokenize.tokenize,
    tokenize.detokenize,
    models.list_models,
    models.get_model,
    management.available,
    management.loaded,
    management.hosts,
    management.pull,
    management.download,
    management.load,
    management.unload,
    management.set_default,
    management.health,
    model_admin.show,
    model_admin.delete,
    health.live,
    health.ready,
    health.metrics,
    usage.usage,
]


def create_app(
    settings: Settings, manager: AsyncModelManager | None = None, *, span_exporter: Any | None = None
) -> Litestar:
    """The gateway's app; `span_exporter` (tests) receives its spans instead of DUKAT_OTEL_ENDPOINT."""
    metrics = GatewayMetrics()
    keys = KeyRing.from_settings(settings)
    metrics.registry.register(KeysCollector(keys))
    manager = manager or AsyncModelManager(settings, metrics=metrics)
    preloaded = not settings.preload
    state = State({
        "manager": manager,
        "settings": settings,
        "key_ring": keys,
        "metrics": metrics,
        "preloaded": preloaded,
        "streams": StreamControl(settings.sse_keepalive_s, settings.stream_buffer_events),
        "intake": Intake(settings),
    })

    async def preload_one(model_id: str) -> None:
        # One line as each is ready: the banner said it was loading (gateway/cli/banner.py).
        try:
            loaded = await manager.load_model(model_id)
        except DukatError as exc:
            log.warning("preloading %s failed: %s", model_id, exc.message)
        except Exception:
            log.exception("preloading %s failed", model_id)
        else:
            log.info("ready: %s (loaded in %.0f s on %s)", model_id, loaded.load_seconds, loaded.device)

    async def preload() -> None:
        await asyncio.gather(*(preload_one(m) for m in settings.preload))
        state.preloaded = True  # readiness: done, failed ones included (they say why in /api/ps)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await manager.start()
        # Everything built so far (litestar, msgspec types, routes) lives as long as the process: a
        # full collection need not walk it between requests.
        gc.collect()
        gc.freeze()
        # In the background: the gateway answers (live, not ready) while models load.
        preloading = asyncio.ensure_future(preload()) if settings.preload else None
        try:
            yield
        finally:
            if preloading is not None:
                preloading.cancel()
                await asyncio.gather(preloading, return_exceptions=True)
            await manager.close()
            state.intake.close()

    tracing = Tracing.configure(settings.otel_endpoint, "gateway", span_exporter)
    app = Litestar(
        route_handlers=[*ROUTES, assets_router()],
        on_shutdown=[tracing.shutdown],
        state=state,
        request_class=LimitedRequest,  # JSON nested deeper than DUKAT_MAX_JSON_DEPTH is a 400
        lifespan=[lifespan],
        exception_handlers=exception_handlers(),
        guards=[KeyGuard(settings, keys)],  # on the route dispatched to: `//v1/models` is `/v1/models`
        logging_config=None,  # ours (set by `dukat serve`); litestar's default would replace it
        openapi_config=openapi_config(title="Dukat", version="0.1.0"),
    )
    publish_truthful_openapi(app, settings)
    # Outside litestar's router, so unknown routes get a request id and a log line too.
    app.asgi_handler = GatewayMiddleware(  # type: ignore[assignment]
        CancelOnDisconnect(app.asgi_handler), metrics, tracing
    )
    return app
