"""DUKAT_API_KEYS: a real `dukat serve` that demands a bearer key on the API, not on /health."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from shared.processes import ChildProcess
from tests.gateway.conftest import TEST_ENV
from tests.support.openapi_check import validate

KEY = "sk-dukat-test"


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    models_dir: Path = tmp_path_factory.mktemp("locked") / "models"
    env = {**TEST_ENV, "DUKAT_API_KEYS": f"other-key,{KEY}", "DUKAT_LOG_LEVEL": "warning"}
    proc = ChildProcess(
        "gateway.cli",
        ["serve", "--port", "0", "--models-dir", str(models_dir)],
        ready_prefix="DUKAT_GATEWAY_READY",
        env=env,
    )
    url = proc.start(timeout=120)
    try:
        yield url
    finally:
        proc.stop()


def test_api_without_the_key_is_a_401_openai_error(locked: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        resp = httpx.get(f"{locked}/v1/models", headers=headers, timeout=30)
        assert resp.status_code == 401, headers
        body = resp.json()
        validate(body, "ErrorResponse")
        assert body["error"]["code"] == "invalid_api_key" and resp.headers["x-request-id"]
    mgmt = httpx.post(f"{locked}/api/models/unload", json={"model": "x"}, timeout=30)
    assert mgmt.status_code == 401


def test_the_openai_sdk_with_a_listed_key_gets_through_and_without_raises(locked: str) -> None:
    good = openai.OpenAI(base_url=f"{locked}/v1", api_key=KEY, max_retries=0)
    assert good.models.list().data == []
    bad = openai.OpenAI(base_url=f"{locked}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_health_needs_no_key(locked: str) -> None:
    assert httpx.get(f"{locked}/health", timeout=30).status_code == 200
