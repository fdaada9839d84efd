"""The OpenAI-compatible API as the real `openai` SDK sees it, against a real `dukat serve` with tiny
models (random weights: the text is gibberish, but greedy and seeded sampling are deterministic)."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.gateway.conftest import DEFAULT_MODEL, Dukat
from tests.support.openapi_check import validate

CHAT = "tiny/tinyllama"
EMBED = "tiny/bert"
# Greedy tinyllama runs 40+ tokens on this prompt without meeting an end-of-sequence token.
HELLO = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(dukat: Dukat) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=dukat.base_url, api_key="x", max_retries=0, timeout=120) as c:
        yield c


def async_client(dukat: Dukat) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=dukat.base_url, api_key="x", max_retries=0, timeout=120)


def chat(client: openai.OpenAI, **kwargs: Any) -> Any:
    kwargs.setdefault("model", CHAT)
    kwargs.setdefault("messages", HELLO)
    return client.chat.completions.create(**kwargs)


def greedy_text(client: openai.OpenAI, **kwargs: Any) -> str:
    return chat(client, temperature=0, **kwargs).choices[0].message.content


def sse_data(lines: Iterator[str]) -> list[str]:
    """The `data:` payloads of an SSE body, in order (`[DONE]` included)."""
    return [line.removeprefix("data:").strip() for line in lines if line.startswith("data:")]


def completion_chunk_for_schema(chunk: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's CreateCompletionResponse (shared by stream chunks) has a non-null finish_reason enum,
    but OpenAI itself streams null before a choice ends: check everything else of such a chunk."""
    choices = [{**c, "finish_reason": c["finish_reason"] or "stop"} for c in chunk["choices"]]
    return {**chunk, "choices": choices}


# ---- chat, non-streaming -----------------------------------------------------------------------


def test_chat_response_validates_against_openai_schema(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model=CHAT, messages=HELLO, max_tokens=8)
    body = json.loads(raw.text)
    validate(body, "CreateChatCompletionResponse")
    parsed = raw.parse()
    assert parsed.object == "chat.completion"
    assert parsed.model == CHAT
    assert parsed.choices[0].message.role == "assistant"
    assert isinstance(parsed.choices[0].message.content, str)


def test_chat_usage_numbers_add_up(client: openai.OpenAI) -> None:
    short = chat(client, max_tokens=4, temperature=0).usage
    many_words = [{"role": "user", "content": "word " * 40}]
    longer = chat(client, messages=many_words, max_tokens=4, temperature=0).usage
    assert short.total_tokens == short.prompt_tokens + short.completion_tokens
    assert 0 < short.completion_tokens <= 4
    assert 0 < short.prompt_tokens < longer.prompt_tokens


def test_a_repeated_long_prefix_is_reported_cached_in_usage_and_metrics(
    dukat: Dukat, client: openai.OpenAI
) -> None:
    rules = " ".join(f"Rule {i}: answer {i} in plain words." for i in range(12))  # ~230 tokens
    system = {"role": "system", "content": rules}

    def hits() -> float:
        metrics = httpx.get(f"{dukat.url}/metrics", timeout=30).text
        lines = [ln for ln in metrics.splitlines() if ln.startswith("vllm:prefix_cache_hits_total{")]
        return sum(float(ln.rsplit(" ", 1)[1]) for ln in lines if f'model_name="{CHAT}"' in ln)

    first = chat(client, messages=[system, {"role": "user", "content": "Hi"}], max_tokens=3, temperature=0)
    before = hits()
    again = chat(client, messages=[system, {"role": "user", "content": "Hello"}], max_tokens=3, temperature=0)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert 100 < cached < again.usage.prompt_tokens and cached % 16 == 0  # whole blocks of the prefix
    assert hits() - before == cached


def test_max_tokens_reached_gives_finish_reason_length(client: openai.OpenAI) -> None:
    result = chat(client, max_tokens=5, temperature=0)
    assert result.choices[0].finish_reason == "length"
    assert result.usage.completion_tokens == 5


def test_max_completion_tokens_is_honoured(client: openai.OpenAI) -> None:
    # LangChain's ChatOpenAI sends this instead of max_tokens.
    result = chat(client, max_completion_tokens=3, temperature=0)
    assert result.choices[0].finish_reason == "length"
    assert result.usage.completion_tokens == 3


def test_stop_sequence_cuts_text_right_before_it(client: openai.OpenAI) -> None:
    full = greedy_text(client, max_tokens=24)
    # A stop string from the middle of the greedy reply (letters and digits only).
    stop = next(
        full[i : i + 3] for i in range(len(full) // 3, len(full) - 3)
        if full[i : i + 3].isalnum()
    )
    result = chat(client, max_tokens=24, temperature=0, stop=[stop])
    text = result.choices[0].message.content
    assert text == full[: full.index(stop)].rstrip()
    assert stop not in text
    assert result.choices[0].finish_reason == "stop"


def test_same_seed_reproduces_sampled_text(client: openai.OpenAI) -> None:
    first = chat(client, temperature=1, seed=1234, max_tokens=16).choices[0].message.content
    again = chat(client, temperature=1, seed=1234, max_tokens=16).choices[0].message.content
    assert first == again


def test_different_seed_gives_different_text(client: openai.OpenAI) -> None:
    texts = {chat(client, temperature=1, seed=s, max_tokens=16).choices[0].message.content for s in (1, 2, 3)}
    assert len(texts) > 1


def test_tiny_temperature_is_greedy(client: openai.OpenAI) -> None:
    # 1e-300 used to overflow the worker's float32 logits (a 500); vLLM also treats < 1e-5 as greedy.
    tiny = chat(client, temperature=1e-300, max_tokens=8).choices[0].message.content
    assert tiny == greedy_text(client, max_tokens=8)


def test_n_2_gives_two_choices(client: openai.OpenAI) -> None:
    result = chat(client, n=2, temperature=1, seed=7, max_tokens=6)
    assert [c.index for c in result.choices] == [0, 1]
    assert all(isinstance(c.message.content, str) for c in result.choices)
    # Usage counts the prompt once and both completions.
    assert result.usage.completion_tokens == 12


def test_system_and_multi_turn_conversation(client: openai.OpenAI) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi."},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    result = chat(client, messages=messages, max_tokens=6)
    lone = chat(client, messages=messages[-1:], max_tokens=6)
    assert isinstance(result.choices[0].message.content, str)
    assert result.usage.prompt_tokens > lone.usage.prompt_tokens


def test_content_as_text_parts_equals_plain_string(client: openai.OpenAI) -> None:
    parts = [{"type": "text", "text": "What is the capital "}, {"type": "text", "text": "of France?"}]
    as_parts = greedy_text(client, messages=[{"role": "user", "content": parts}], max_tokens=8)
    assert as_parts == greedy_text(client, max_tokens=8)


def test_mistral_folds_system_message_into_user_turn(client: openai.OpenAI) -> None:
    # Mistral's template raises on a system role; Dukat folds it into the first user turn.
    system = [{"role": "system", "content": "Answer in French."}, *HELLO]
    with_system = chat(client, model="tiny/mistral", messages=system, max_tokens=4)
    without = chat(client, model="tiny/mistral", max_tokens=4)
    assert with_system.model == "tiny/mistral"
    assert isinstance(with_system.choices[0].message.content, str)
    assert with_system.usage.prompt_tokens > without.usage.prompt_tokens


def test_model_without_chat_template_chats(client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "Be brief."}, *HELLO]
    result = chat(client, model="tiny/gpt2", messages=messages, max_tokens=4)
    assert result.model == "tiny/gpt2"
    assert isinstance(result.choices[0].message.content, str)
    assert result.usage.prompt_tokens > 0


def test_seq2seq_model_chats(client: openai.OpenAI) -> None:
    result = chat(client, model="tiny/t5", max_tokens=4)
    assert result.model == "tiny/t5"
    assert isinstance(result.choices[0].message.content, str)
    assert result.usage.completion_tokens > 0


def test_request_without_model_uses_default(dukat: Dukat) -> None:
    body = {"messages": HELLO, "max_tokens": 2}
    response = httpx.post(f"{dukat.base_url}/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == DEFAULT_MODEL


def test_request_id_header_comes_back(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=CHAT, messages=HELLO, max_tokens=2, extra_headers={"X-Request-Id": "sdk-test-4242"}
    )
    assert raw.headers["x-request-id"] == "sdk-test-4242"
    assert "sdk-test-4242" in raw.parse().id
    with client.chat.completions.with_streaming_response.create(
        model=CHAT, messages=HELLO, max_tokens=2, stream=True, extra_headers={"X-Request-Id": "sdk-stream-7"}
    ) as streamed:
        assert streamed.headers["x-request-id"] == "sdk-stream-7"
        assert all(chunk.id.endswith("sdk-stream-7") for chunk in streamed.parse())


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_n_larger_than_the_worker_queue_succeeds(client: openai.OpenAI, stream: bool) -> None:
    # n=128 (OpenAI's maximum) used to flood the worker past its queue (80 by default): a 429
    # that no retry could fix. A request's choices now queue behind each other; a group larger than
    # the worker needs all its places, so a request still in flight elsewhere is a 429 with a
    # Retry-After that the SDK's own retries (on by default) honour.
    result = chat(client.with_options(max_retries=5), n=128, max_tokens=1, stream=stream)
    choices = [c for chunk in result for c in chunk.choices] if stream else result.choices
    assert {c.index for c in choices} == set(range(128))


# ---- chat, streaming ---------------------------------------------------------------------------


def test_stream_chunks_validate_and_start_with_assistant_role(client: openai.OpenAI) -> None:
    with client.chat.completions.with_streaming_response.create(
        model=CHAT, messages=HELLO, max_tokens=6, stream=True
    ) as raw:
        payloads = sse_data(raw.iter_lines())
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_stream_text_equals_non_stream_text(client: openai.OpenAI) -> None:
    expected = greedy_text(client, max_tokens=12, seed=3)
    stream = chat(client, max_tokens=12, temperature=0, seed=3, stream=True)
    deltas = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(deltas) == expected


def test_stream_include_usage_ends_with_usage_chunk(client: openai.OpenAI) -> None:
    stream = chat(client, max_tokens=5, temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == 5
    assert last.usage.total_tokens == last.usage.prompt_tokens + 5
    assert all(c.usage is None for c in chunks[:-1])


def test_raw_stream_is_sse_ending_with_done(dukat: Dukat) -> None:
    body = {"model": CHAT, "messages": HELLO, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{dukat.base_url}/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        payloads = sse_data(response.iter_lines())
    assert payloads[-1] == "[DONE]"
    assert payloads.count("[DONE]") == 1
    assert all(json.loads(p)["object"] == "chat.completion.chunk" for p in payloads[:-1])


def test_stream_n_2_streams_both_choices(client: openai.OpenAI) -> None:
    stream = chat(client, n=2, temperature=1, seed=5, max_tokens=5, stream=True)
    texts = {0: "", 1: ""}
    finished = set()
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished.add(choice.index)
    assert finished == {0, 1}
    whole = chat(client, n=2, temperature=1, seed=5, max_tokens=5)
    assert [texts[0], texts[1]] == [c.message.content for c in whole.choices]


# ---- async client ------------------------------------------------------------------------------


async def test_async_concurrent_chat_requests_all_succeed(dukat: Dukat, client: openai.OpenAI) -> None:
    expected = greedy_text(client, max_tokens=10)
    async with async_client(dukat) as aclient:
        results = await asyncio.gather(*(
            aclient.chat.completions.create(model=CHAT, messages=HELLO, max_tokens=10, temperature=0)
            for _ in range(4)
        ))
    # Concurrent requests (batched or queued) give what a lone request gives.
    assert [r.choices[0].message.content for r in results] == [expected] * 4
    assert len({r.id for r in results}) == 4


async def test_async_stream(dukat: Dukat, client: openai.OpenAI) -> None:
    expected = greedy_text(client, max_tokens=8)
    async with async_client(dukat) as aclient:
        stream = await aclient.chat.completions.create(
            model=CHAT, messages=HELLO, max_tokens=8, temperature=0, stream=True
        )
        deltas = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(deltas) == expected


# ---- completions -------------------------------------------------------------------------------


def test_completion_validates_against_openai_schema(client: openai.OpenAI) -> None:
    raw = client.completions.with_raw_response.create(model=CHAT, prompt="Once upon a time", max_tokens=6)
    validate(json.loads(raw.text), "CreateCompletionResponse")
    result = raw.parse()
    assert result.object == "text_completion"
    assert result.model == CHAT
    assert result.choices[0].finish_reason in ("stop", "length")
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens


def test_completion_prompt_list_gives_one_choice_per_prompt(client: openai.OpenAI) -> None:
    prompts = ["Once upon a time", "The weather today"]
    both = client.completions.create(model=CHAT, prompt=prompts, max_tokens=6, temperature=0)
    alone = [client.completions.create(model=CHAT, prompt=p, max_tokens=6, temperature=0) for p in prompts]
    assert [c.index for c in both.choices] == [0, 1]
    assert [c.text for c in both.choices] == [a.choices[0].text for a in alone]
    assert both.usage.prompt_tokens == sum(a.usage.prompt_tokens for a in alone)


def test_completion_echo_prepends_the_prompt(client: openai.OpenAI) -> None:
    plain = client.completions.create(model=CHAT, prompt="Once upon a time", max_tokens=4, temperature=0)
    echoed = client.completions.create(
        model=CHAT, prompt="Once upon a time", max_tokens=4, temperature=0, echo=True
    )
    assert echoed.choices[0].text == "Once upon a time" + plain.choices[0].text


def test_completion_stream_matches_non_stream(client: openai.OpenAI) -> None:
    expected = client.completions.create(model=CHAT, prompt="Once upon a time", max_tokens=8, temperature=0)
    with client.completions.with_streaming_response.create(
        model=CHAT, prompt="Once upon a time", max_tokens=8, temperature=0, stream=True
    ) as raw:
        payloads = sse_data(raw.iter_lines())
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    for chunk in chunks:
        validate(completion_chunk_for_schema(chunk), "CreateCompletionResponse")
    assert "".join(c["choices"][0]["text"] for c in chunks) == expected.choices[0].text
    assert chunks[-1]["choices"][0]["finish_reason"] == expected.choices[0].finish_reason


def test_completion_stream_through_sdk(client: openai.OpenAI) -> None:
    stream = client.completions.create(
        model=CHAT, prompt="Once upon a time", max_tokens=5, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 5


# ---- embeddings --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embed_size(dukat: Dukat) -> int:
    return json.loads((dukat.models_dir / EMBED / "config.json").read_text())["hidden_size"]


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def test_embeddings_default_base64_decode_to_unit_vectors(client: openai.OpenAI, embed_size: int) -> None:
    # The SDK asks for base64 and decodes it itself.
    result = client.embeddings.create(model=EMBED, input=["a cat", "a dog", "quantum physics"])
    assert [d.index for d in result.data] == [0, 1, 2]
    for item in result.data:
        assert len(item.embedding) == embed_size
        assert norm(item.embedding) == pytest.approx(1.0, abs=1e-4)
    assert result.data[0].embedding != result.data[2].embedding
    assert result.usage.prompt_tokens > 0


def test_embeddings_float_equals_base64(dukat: Dukat, client: openai.OpenAI) -> None:
    floats = client.embeddings.create(model=EMBED, input=["a cat"], encoding_format="float")
    body = {"model": EMBED, "input": ["a cat"], "encoding_format": "base64"}
    raw = httpx.post(f"{dukat.base_url}/embeddings", json=body, timeout=120).json()
    packed = base64.b64decode(raw["data"][0]["embedding"])
    decoded = list(struct.unpack(f"<{len(packed) // 4}f", packed))
    assert decoded == pytest.approx(floats.data[0].embedding, abs=1e-6)


def test_embeddings_token_id_input(dukat: Dukat, embed_size: int) -> None:
    # Over plain HTTP: token ids through an OpenAI SDK are refused (test_embedding_token_ids.py).
    def embed(ids: list[int] | list[list[int]]) -> list[dict[str, Any]]:
        resp = httpx.post(f"{dukat.base_url}/embeddings", json={"model": EMBED, "input": ids}, timeout=120)
        assert resp.status_code == 200, resp.text
        return list(resp.json()["data"])

    one, many = embed([5, 6, 7, 8]), embed([[5, 6, 7, 8], [9, 10]])
    assert len(one) == 1 and len(many) == 2
    assert len(many[1]["embedding"]) == embed_size
    assert many[0]["embedding"] == pytest.approx(one[0]["embedding"], abs=1e-5)


def test_embeddings_float_response_validates(client: openai.OpenAI) -> None:
    raw = client.embeddings.with_raw_response.create(model=EMBED, input="a cat", encoding_format="float")
    validate(json.loads(raw.text), "CreateEmbeddingResponse")


# ---- models ------------------------------------------------------------------------------------


def test_models_list_has_served_ids_and_dukat_fields(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    for model_id in (CHAT, "tiny/mistral", "tiny/gpt2", "tiny/t5", EMBED):
        assert model_id in models
        assert models[model_id].object == "model"
        assert models[model_id].owned_by == "tiny"
        assert models[model_id].model_extra["state"] in ("available", "loading", "loaded", "failed")
    assert models[CHAT].model_extra["default"] is True
    assert models["tiny/gpt2"].model_extra["default"] is False


def test_models_list_validates(dukat: Dukat) -> None:
    validate(httpx.get(f"{dukat.base_url}/models", timeout=30).json(), "ListModelsResponse")


def test_models_retrieve_with_slash_in_id(client: openai.OpenAI) -> None:
    chat(client, max_tokens=1)  # loaded by now
    model = client.models.retrieve(CHAT)
    assert model.id == CHAT
    assert model.model_extra["state"] == "loaded"


def test_models_retrieve_unknown_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("tiny/no-such-model")
    assert caught.value.code == "model_not_found"
