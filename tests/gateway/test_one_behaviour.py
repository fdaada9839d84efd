"""One action, one behaviour: HTTP, the CLI and the seed's Python API (attached to the same worker
host and config file) answer the same request with the same result or the same error."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from gateway import ModelManager
from shared.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    NotFoundError,
    UnsupportedTaskError,
)
from shared.model_config import ConfigStore, ModelEntry
from tests.gateway.conftest import INTERNAL_TOKEN, TEST_ENV, Dukat
from tests.gateway.test_cli import dukat_cli, ok

NOT_PULLED = "dukat-test/never-pulled"
EMBED = "tiny/bert"


@pytest.fixture(scope="module")
def python_api(dukat: Dukat, http: httpx.Client) -> Iterator[ModelManager]:
    """The seed's ModelManager on the served instance's own worker host and config file."""
    host_url = http.get("/api/hosts").json()[0]["url"]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DUKAT_INTERNAL_TOKEN", INTERNAL_TOKEN)  # the served host's token (settings read now)
        manager = ModelManager(models_dir=dukat.models_dir, config_path=dukat.config_path, hosts=[host_url])
    try:
        yield manager
    finally:
        manager.close()


def http_error(resp: httpx.Response, status: int) -> dict[str, str]:
    assert resp.status_code == status, resp.text
    return dict(resp.json()["error"])


def test_a_model_that_is_not_pulled_is_a_404_that_says_pull_it(
    http: httpx.Client, python_api: ModelManager
) -> None:
    body = {"model": NOT_PULLED, "messages": [{"role": "user", "content": "hi"}]}
    error = http_error(http.post("/v1/chat/completions", json=body), 404)
    assert error["code"] == "model_not_found"
    assert f"pull it first: dukat pull {NOT_PULLED}" in error["message"]
    with pytest.raises(ModelNotFoundError) as caught:
        python_api.generate("hi", model_id=NOT_PULLED)
    assert caught.value.message == error["message"]


def test_unloading_a_model_that_is_not_loaded_fails_alike(
    dukat: Dukat, http: httpx.Client, python_api: ModelManager
) -> None:
    http.post("/api/models/unload", json={"model": "tiny/t5"})  # other modules on this server may load it
    error = http_error(http.post("/api/models/unload", json={"model": "tiny/t5"}), 404)
    with pytest.raises(NotFoundError) as caught:
        python_api.unload_model("tiny/t5")
    assert caught.value.message == error["message"] and caught.value.status == 404
    result = dukat_cli(dukat, "unload", "tiny/t5")
    assert result.returncode == 1 and result.stderr.strip() == f"error (404): {error['message']}"


def test_a_bad_quantization_is_a_python_message_in_python(
    python_api: ModelManager, http: httpx.Client
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        python_api.load_model("tiny/gpt2", quantization="3bit")
    assert caught.value.message == "quantization must be '4bit', '8bit' or 'none', not '3bit'"
    assert caught.value.param == "quantization"
    body = {"model": "tiny/gpt2", "quantization": "3bit"}
    error = http_error(http.post("/api/models/load", json=body), 400)
    assert error["param"] == "quantization"


def test_an_embedding_model_cannot_be_the_default(
    dukat: Dukat, http: httpx.Client, python_api: ModelManager
) -> None:
    before = dukat.config()["default_model"]
    error = http_error(http.post("/api/models/default", json={"model": EMBED}), 400)
    assert error["code"] == "unsupported_task" and "embedding model" in error["message"]
    with pytest.raises(UnsupportedTaskError) as caught:
        python_api.set_default_model(EMBED)
    assert caught.value.message == error["message"]
    result = dukat_cli(dukat, "default", EMBED)
    assert result.returncode == 1 and result.stderr.strip() == f"error (400): {error['message']}"
    assert dukat.config()["default_model"] == before


@pytest.fixture
def configured_none(dukat: Dukat, tiny_model_dir: Callable[[str], Path]) -> Iterator[str]:
    """A model whose config entry says `none`, as the demo's do."""
    model_id = "behave/tiny-opt"
    shutil.copytree(tiny_model_dir("opt"), dukat.models_dir / model_id, dirs_exist_ok=True)
    ConfigStore(dukat.config_path).set_entry(model_id, ModelEntry(description="", quantization="none"))
    yield model_id
    httpx.post(f"{dukat.url}/api/models/unload", json={"model": model_id}, timeout=60)


def test_list_ps_and_show_agree_on_the_quantization_a_load_asked_for(
    dukat: Dukat, http: httpx.Client, configured_none: str
) -> None:
    load = http.post("/api/models/load", json={"model": configured_none, "quantization": "8bit"})
    assert load.status_code == 200, load.text
    listed = {m["id"]: m for m in http.get("/api/models").json()["data"]}[configured_none]
    running = {m["id"]: m for m in http.get("/api/ps").json()["data"]}[configured_none]
    shown = http.get(f"/api/models/{configured_none}").json()
    assert listed["quantization"] == running["quantization"] == shown["quantization"] == "8bit"
    out = ok(dukat_cli(dukat, "list"))
    lines = out.splitlines()
    quant = next(line for line in lines if line.startswith("ID")).index("QUANT")  # the column, wherever it is
    assert next(line for line in lines if line.startswith(configured_none))[quant:].split()[0] == "8bit"


def test_the_python_api_prints_nothing_but_what_the_program_prints(
    tmp_path: Path, tiny_model_dir: Callable[[str], Path]
) -> None:
    shutil.copytree(tiny_model_dir("gpt2"), tmp_path / "models" / "tiny" / "gpt2")
    program = textwrap.dedent(f"""
        from gateway import ModelManager
        with ModelManager(models_dir={str(tmp_path / "models")!r}) as manager:
            manager.load_model("tiny/gpt2", quantization="none")
            text, meta = manager.generate("hi", model_id="tiny/gpt2", max_new_tokens=2)
            manager.unload_model("tiny/gpt2")
        print("done", meta["model"])
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUKAT_")}
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=180,
        env={**env, **TEST_ENV}, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "done tiny/gpt2\n"
    assert result.stderr == ""  # no uvicorn lines, no worker logs: they go to the logging module

