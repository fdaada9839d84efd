"""This year's architectures through the real gateway (issue 21): tiny random-weight models of the
twelve architectures, placed under models_dir with their hub ids and no config entry, answer chat
whole, streamed and under 4 concurrent requests; `/api/models` tells their architecture and task,
`/api/ps` whether they batch; an architecture transformers does not know is a 400 naming it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.conftest import TINY_MODEL_CACHE
from tests.gateway.conftest import TEST_ENV
from tests.support.checks import error_of
from tests.support.openapi_check import validate
from tests.support.served import dukat_serve
from tests.support.tiny_modern_models import MODERN_MODELS, ensure_modern_model

UNKNOWN = "someone/brand-new-arch"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    models_dir = tmp_path_factory.mktemp("modern") / "models"
    for hub_id in MODERN_MODELS:
        shutil.copytree(ensure_modern_model(hub_id, TINY_MODEL_CACHE), models_dir / hub_id)
    unknown = models_dir / UNKNOWN
    shutil.copytree(ensure_modern_model("Qwen/Qwen3-0.6B", TINY_MODEL_CACHE), unknown)
    config = json.loads((unknown / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps({**config, "model_type": "brand_new_arch"}))
    env = {**TEST_ENV, "DUKAT_LOG_LEVEL": "warning"}
    with dukat_serve(models_dir, env) as (url, _proc):
        yield url


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def _ask(client: openai.OpenAI, model: str, content: str) -> str:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=12, temperature=0
    )
    assert reply.choices[0].finish_reason in ("stop", "length")
    return reply.choices[0].message.content or ""


@pytest.mark.parametrize("hub_id", list(MODERN_MODELS))
def test_modern_architecture_chats_whole_streamed_and_concurrently(served: str, hub_id: str) -> None:
    client = _client(served)
    try:
        whole = _ask(client, hub_id, "What is the capital of France?")
        stream = client.chat.completions.create(
            model=hub_id, messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=12, temperature=0, stream=True,
        )  # fmt: skip
        chunks = list(stream)
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == whole  # greedy: the same text, whole or streamed
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        prompts = ["Hello", "Tell me a story", "How many legs does a spider have?", "Good morning!"]
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(lambda p: _ask(client, hub_id, p), prompts))
        alone = [_ask(client, hub_id, p) for p in prompts]
        assert together == alone  # batched or one at a time, each stream's greedy text is its own
        ps = {m["id"]: m for m in httpx.get(f"{served}/api/ps", timeout=30).json()["data"]}
        assert ps[hub_id]["batching"] is (ps[hub_id]["batching_reason"] is None)
    finally:
        httpx.post(f"{served}/api/models/unload", json={"model": hub_id}, timeout=60)


def test_models_list_their_architecture_and_task(served: str) -> None:
    rows = {m["id"]: m for m in httpx.get(f"{served}/api/models", timeout=30).json()["data"]}
    for hub_id, spec in MODERN_MODELS.items():
        assert rows[hub_id]["architecture"] == spec.model_type
        assert rows[hub_id]["task"] == ("vision" if spec.vision else "chat")
        assert rows[hub_id]["model_type"] == ("vision" if spec.vision else "causal")


def test_lfm2_runs_one_sequence_at_a_time_and_says_why(served: str) -> None:
    hub_id = "LiquidAI/LFM2-350M"
    try:
        _ask(_client(served), hub_id, "Hi")
        ps = {m["id"]: m for m in httpx.get(f"{served}/api/ps", timeout=30).json()["data"]}
        assert ps[hub_id]["batching"] is False
        assert "LinearAttentionLayer" in ps[hub_id]["batching_reason"]
    finally:
        httpx.post(f"{served}/api/models/unload", json={"model": hub_id}, timeout=60)


def test_an_architecture_transformers_does_not_know_is_a_400_naming_it(served: str) -> None:
    import transformers

    response = httpx.post(
        f"{served}/v1/chat/completions",
        json={"model": UNKNOWN, "messages": [{"role": "user", "content": "Hi"}]},
        timeout=120,
    )
    error = error_of(response, 400, "unsupported_model_type")
    assert "'brand_new_arch'" in error["message"]
    assert f"transformers {transformers.__version__}" in error["message"]


def test_a_reasoning_models_thinking_lands_in_reasoning_content_whole_and_streamed(served: str) -> None:
    hub_id = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"  # its generation prompt opens <think>
    body = {"model": hub_id, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8,
            "temperature": 0}  # fmt: skip
    try:
        whole = httpx.post(f"{served}/v1/chat/completions", json=body, timeout=120).json()
        choice = whole["choices"][0]
        # A block cut by max_tokens: reasoning with finish_reason "length", nothing in content.
        assert choice["finish_reason"] == "length" and choice["message"]["content"] == ""
        assert choice["message"]["reasoning_content"] == choice["message"]["reasoning"] != ""
        thinking, content = [], []
        with httpx.stream("POST", f"{served}/v1/chat/completions", json={**body, "stream": True},
                          timeout=120) as resp:  # fmt: skip
            for line in resp.iter_lines():
                if line.startswith("data: {"):
                    for c in json.loads(line[6:])["choices"]:
                        thinking.append(c["delta"].get("reasoning_content") or "")
                        content.append(c["delta"].get("content") or "")
        assert "".join(thinking) == choice["message"]["reasoning_content"]
        assert "".join(content) == ""
    finally:
        httpx.post(f"{served}/api/models/unload", json={"model": hub_id}, timeout=60)


def test_chat_template_kwargs_reach_the_template(served: str) -> None:
    hub_id = "Qwen/Qwen3-0.6B"
    body = {"model": hub_id, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    try:
        default = httpx.post(f"{served}/v1/chat/completions", json=body, timeout=120).json()
        off = {**body, "chat_template_kwargs": {"enable_thinking": False}}
        thinking_off = httpx.post(f"{served}/v1/chat/completions", json=off, timeout=120).json()
        # The template closed an empty thinking block in the prompt: 4+ more prompt tokens.
        assert thinking_off["usage"]["prompt_tokens"] > default["usage"]["prompt_tokens"]
        bad = {**body, "chat_template_kwargs": {"add_generation_prompt": False}}
        refused = httpx.post(f"{served}/v1/chat/completions", json=bad, timeout=120)
        error_of(refused, 400, param="chat_template_kwargs")
    finally:
        httpx.post(f"{served}/api/models/unload", json={"model": hub_id}, timeout=60)


def test_responses_return_the_thinking_as_a_reasoning_item_and_count_its_tokens(served: str) -> None:
    hub_id = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    client = _client(served)
    try:
        out = client.responses.create(model=hub_id, input="Hi", max_output_tokens=6, temperature=0)
        validate(out.model_dump(mode="json", exclude_unset=True), "Response")
        reasoning = [item for item in out.output if item.type == "reasoning"]
        assert len(reasoning) == 1 and reasoning[0].content and reasoning[0].content[0].text
        assert out.usage is not None and out.usage.output_tokens_details.reasoning_tokens == 6
        assert out.status == "incomplete" and out.output_text == ""  # cut inside the block
        events = list(client.responses.create(model=hub_id, input="Hi", max_output_tokens=6, stream=True))
        for event in events:
            validate(event.model_dump(mode="json", exclude_unset=True), "ResponseStreamEvent")
        last = events[-1].response  # type: ignore[union-attr]
        assert [i.type for i in last.output] == ["reasoning", "message"]
        # The thinking streams as it comes, in the reasoning item at output 0.
        deltas = [e for e in events if e.type == "response.reasoning_text.delta"]
        assert deltas and {e.output_index for e in deltas} == {0}
        assert "".join(e.delta for e in deltas) == last.output[0].content[0].text  # type: ignore[union-attr]
    finally:
        httpx.post(f"{served}/api/models/unload", json={"model": hub_id}, timeout=60)
