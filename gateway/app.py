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
from gateway.middleware import GatewayMiddleware
from gateway.routes import chat, completions, embeddings, management, models
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
]


def create_app(settings: Settings, manager: AsyncModelManager | None = None) -> Litestar:
    manager = manager or AsyncModelManager(settings)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await manager.start()
        if settings.preload:
            results = await asyncio.gather(
                *(manager.load_model(m) for m in settings.preload), return_exceptions=True
            )
            for model_id, result in zip(settings.preload, results, strict=True):
                if isinstance(result, BaseException):
                    log.error("preloading %s failed: %s", model_id, result)
        try:
            yield
        finally:
            await manager.close()

    app = Litestar(
        route_handlers=ROUTES,
        state=State({"manager": manager}),
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
