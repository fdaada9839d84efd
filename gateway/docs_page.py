"""The `/docs` page (Swagger UI) with its JS, CSS and icon served by Dukat itself, from the
`swagger-ui-py` package: the page renders offline, with no CDN.

Not `swagger-ui-bundle`: it ships Swagger UI 4, which refuses litestar's OpenAPI 3.1 document
("does not specify a valid version field"); `swagger-ui-py` ships Swagger UI 5.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from litestar import Router
from litestar.datastructures import CacheControlHeader
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.static_files import create_static_files_router

DOCS_PATH = "/docs"
ASSETS_PATH = f"{DOCS_PATH}/assets"


def _assets_dir() -> Path:
    # Found without importing the package: its __init__ imports jinja2 and web-framework glue.
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package is missing: pip install -e . installs it")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def openapi_config(*, title: str, version: str) -> OpenAPIConfig:
    swagger = SwaggerRenderPlugin(
        js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        css_url=f"{ASSETS_PATH}/swagger-ui.css",
        standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
        # litestar's default icon is on a CDN too.
        favicon=f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/favicon-32x32.png'>",
        path="/",
    )
    return OpenAPIConfig(title=title, version=version, path=DOCS_PATH, render_plugins=[swagger])


def assets_router() -> Router:
    """The Swagger UI files; they only change with the pinned package, so browsers may keep them."""
    return create_static_files_router(
        path=ASSETS_PATH,
        directories=[_assets_dir()],
        name="docs-assets",
        cache_control=CacheControlHeader(max_age=86400, public=True),
        include_in_schema=False,
    )
