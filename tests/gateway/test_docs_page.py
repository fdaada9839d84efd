"""`/docs` renders offline: Swagger UI's JS and CSS come from Dukat itself, checked in a real
headless browser that cannot resolve any other host."""

from __future__ import annotations

import re

import httpx

from tests.gateway.conftest import Dukat
from tests.support.browser import chromium_or_skip, rendered_dom


def test_docs_page_names_no_other_host(http: httpx.Client) -> None:
    page = http.get("/docs")
    assert page.status_code == 200
    sources = re.findall(r"""(?:src|href)=["']([^"']+)""", page.text)
    assert sources and all(s.startswith("/docs/assets/") for s in sources), sources
    for source in sources:
        asset = http.get(source)
        assert asset.status_code == 200 and len(asset.content) > 1000, source


def test_docs_page_renders_every_operation_offline(dukat: Dukat, http: httpx.Client) -> None:
    browser = chromium_or_skip()
    dom = rendered_dom(browser, f"{dukat.url}/docs")
    rendered = set(re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', dom))
    documented = set(http.get("/docs/openapi.json").json()["paths"])
    assert "/v1/chat/completions" in documented and "/api/models/load" in documented
    assert rendered == documented, dom[-3000:]
