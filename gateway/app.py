"""The gateway's app factory: routes, error handlers, middleware and the model manager's lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin

from gateway.errors import exception_handlers
from gateway.manager import AsyncModelManager
from gateway.metrics import GatewayMetrics
from gateway.middleware import GatewayMiddleware
from gateway.routes import chat, completions, embeddings, health, management, models
from shared.settings import Settings

log = logging.getLogger(__name__)

ROUTES = [
    chat.chat_completions,
    completions.completions,
    embeddings.embeddings,
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
    health.live,
    health.ready,
    health.metrics,
]


def create_app(settings: Settings, manager: AsyncModelManager | None = None) -> Litestar:
    metrics = GatewayMetrics()
    manager = manager or AsyncModelManager(settings, metrics=metrics)
    state = State({"manager": manager, "metrics": metrics, "preloaded": not settings.preload})

    async def preload() -> None:
        results = await asyncio.gather(
            *(manager.load_model(m) for m in settings.preload), return_exceptions=True
        )
        for model_id, result in zip(settings.preload, results, strict=True):
            if isinstance(result, BaseException):
                log.error("preloading %s failed: %s", model_id, result)
        state.preloaded = True  # readiness: done, failed ones included (they say why in /api/ps)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await manager.start()
        # In the background: the gateway answers (live, not ready) while models load.
        preloading = asyncio.ensure_future(preload()) if settings.preload else None
        try:
            yield
        finally:
            if preloading is not None:
                preloading.cancel()
                await asyncio.gather(preloading, return_exceptions=True)
            await manager.close()

    app = Litestar(
        route_handlers=ROUTES,
        state=state,
        lifespan=[lifespan],
        exception_handlers=exception_handlers(),
        logging_config=None,  # ours (set by `dukat serve`); litestar's default would replace it
        openapi_config=OpenAPIConfig(
            title="Dukat",
            version="0.1.0",
            path="/docs",
            render_plugins=[SwaggerRenderPlugin(path="/")],
        ),
    )
    # Outside litestar's router, so unknown routes get a request id and auth too.
    app.asgi_handler = GatewayMiddleware(app.asgi_handler, settings.api_keys)  # type: ignore[assignment]
    return app
