"""LoRA adapters through the gateway (one `dukat serve`, real processes, the openai SDK): adapter
folders under models_dir are model ids served by their base model's worker; requests for two
adapters and the base run in one batch, each giving what it gives alone; adapters are listed with
their base, loaded and unloaded through the management API, and work with tools, grammars and
logprobs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from shared.processes import ChildProcess
from tests.conftest import TINY_MODEL_CACHE
from tests.gateway.conftest import TEST_ENV
from tests.gateway.test_management_api import follow
from tests.support.checks import wait_for
from tests.support.hub_server import HubServer
from tests.support.tiny_adapters import ALL_PROJECTIONS, place_tiny_adapter
from tests.support.tool_templates import install_hermes_template

BASE = "tiny/base"
ADAPTERS = {"lora/a": {"seed": 1}, "lora/b": {"seed": 2, "r": 8, "targets": ALL_PROJECTIONS}}
SPARE = "lora/c"  # loaded and unloaded by hand
HUB_ADAPTER = "org/lora-hub"  # pulled from the (local) hub
PROMPTS = ["Tell me a story", "What is the capital of France?", "Numbers like 1, 2, 3"]


@pytest.fixture(scope="module")
def served(tiny_model_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    models = tmp_path_factory.mktemp("lora") / "models"
    llama = tiny_model_dir("llama")
    shutil.copytree(llama, models / BASE)
    install_hermes_template(models / BASE)  # tool calls in a format the tiny model's template speaks
    for adapter_id, options in {**ADAPTERS, SPARE: {"seed": 3}}.items():
        place_tiny_adapter(llama, models / adapter_id, TINY_MODEL_CACHE, base_id=BASE, **options)  # type: ignore[arg-type]
    (models / "config.json").write_text(json.dumps({"models": {BASE: {"quantization": "none"}}}))
    on_hub = place_tiny_adapter(llama, models.parent / "hub-adapter", TINY_MODEL_CACHE, base_id=BASE, seed=4)
    with HubServer({HUB_ADAPTER: on_hub}) as hub:
        env = {**TEST_ENV, "DUKAT_LOG_LEVEL": "warning", "DUKAT_WORKER_PING_INTERVAL_S": "0.3",
               "HF_ENDPOINT": hub.url, "HF_HOME": str(models.parent / "hf-home")}  # fmt: skip
        proc = ChildProcess(
            "gateway.cli", ["serve", "--port", "0", "--models-dir", str(models)],
            ready_prefix="DUKAT_GATEWAY_READY", env=env,
        )  # fmt: skip
        try:
            yield proc.start(timeout=120)
        finally:
            proc.stop()


@pytest.fixture(scope="module")
def client(served: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served}/v1", api_key="unused", max_retries=0, timeout=120)


def _cli(served: str, *args: str) -> str:
    """`dukat ARGS --url URL`'s output."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args, "--url", served],
        capture_output=True, text=True, timeout=120, env={**os.environ, **TEST_ENV}, check=True,
    ).stdout  # fmt: skip


def _complete(client: openai.OpenAI, model: str, prompt: str) -> str:
    reply = client.completions.create(model=model, prompt=prompt, max_tokens=24, temperature=0)
    assert reply.model == model
    return reply.choices[0].text


def test_two_adapters_and_the_base_in_one_batch_each_equal_their_own_alone(client: openai.OpenAI) -> None:
    models = [BASE, *ADAPTERS]
    asks = [(model, prompt) for prompt in PROMPTS for model in models]
    alone = [_complete(client, model, prompt) for model, prompt in asks]
    with ThreadPoolExecutor(len(asks)) as pool:
        together = list(pool.map(lambda ask: _complete(client, *ask), asks))
    assert together == alone
    for i in range(0, len(asks), len(models)):  # each adapter changes the base's text
        assert len(set(alone[i : i + len(models)])) == len(models), alone[i : i + len(models)]


def test_adapters_are_listed_with_their_base_as_parent(client: openai.OpenAI, served: str) -> None:
    listed = {m.id: m.model_dump() for m in client.models.list()}
    for adapter_id in [*ADAPTERS, SPARE]:
        assert listed[adapter_id]["parent"] == BASE
        assert listed[adapter_id]["root"] == adapter_id
    assert listed[BASE]["parent"] is None
    assert client.models.retrieve("lora/a").model_dump()["parent"] == BASE
    listing = _cli(served, "list")
    row = next(line for line in listing.splitlines() if line.startswith("lora/a "))
    assert f"lora of {BASE}" in row, listing
    with httpx.Client(base_url=served, timeout=60) as http:
        shown = http.get("/api/models/lora/b")
    assert shown.status_code == 200, shown.text
    assert shown.json()["architecture"].startswith(f"LoRA adapter of {BASE} (rank 8")


def test_an_adapter_loads_and_unloads_through_the_management_api(client: openai.OpenAI, served: str) -> None:
    with httpx.Client(base_url=served, timeout=120) as http:
        loaded = http.post("/api/models/load", json={"model": SPARE})
        assert loaded.status_code == 200, loaded.text
        assert loaded.json()["id"] == SPARE and SPARE in loaded.json()["adapters"]

        def state() -> str:
            return next(m for m in http.get("/api/models").json()["data"] if m["id"] == SPARE)["state"]

        wait_for(lambda: state() == "loaded", 10, "the adapter shows as loaded")
        assert http.post("/api/models/unload", json={"model": SPARE}).status_code == 200
        wait_for(lambda: state() == "available", 10, "the adapter shows as unloaded")
        again = http.post("/api/models/unload", json={"model": SPARE})
        assert again.status_code == 404, again.text
        assert _cli(served, "load", SPARE).startswith(f"loaded {SPARE} on cpu")  # the CLI's the same
        wait_for(lambda: state() == "loaded", 10, "the adapter shows as loaded again")
        assert _cli(served, "unload", SPARE).strip() == f"unloaded {SPARE}"
    assert _complete(client, SPARE, "Hi")  # a request loads it again


def test_an_adapter_answers_with_logprobs_a_json_schema_and_a_forced_tool_call(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(
        model="lora/a", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0,
        logprobs=True, top_logprobs=2,
    )  # fmt: skip
    assert chat.choices[0].logprobs is not None and len(chat.choices[0].logprobs.content or []) == 4
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}  # fmt: skip
    shaped = client.chat.completions.create(
        model="lora/b", messages=[{"role": "user", "content": "A number"}], max_tokens=40, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
    )  # fmt: skip
    assert isinstance(json.loads(shaped.choices[0].message.content or "")["n"], int)
    tool = {"type": "function", "function": {"name": "add", "parameters": schema}}
    called = client.chat.completions.create(
        model="lora/b", messages=[{"role": "user", "content": "Add"}], max_tokens=60, temperature=0,
        tools=[tool], tool_choice={"type": "function", "function": {"name": "add"}},  # type: ignore[list-item]
    )  # fmt: skip
    [call] = called.choices[0].message.tool_calls or []
    assert call.function.name == "add" and isinstance(json.loads(call.function.arguments)["n"], int)


def test_an_adapter_pulled_from_the_hub_is_served_by_its_base(client: openai.OpenAI, served: str) -> None:
    with httpx.Client(base_url=served, timeout=120) as http:
        job = http.post("/api/models/pull", json={"model": HUB_ADAPTER})
        assert job.status_code in (200, 202), job.text
        assert follow(http, job.json()["id"])[-1]["status"] == "done"
    assert client.models.retrieve(HUB_ADAPTER).model_dump()["parent"] == BASE
    assert _complete(client, HUB_ADAPTER, PROMPTS[0]) != _complete(client, BASE, PROMPTS[0])
