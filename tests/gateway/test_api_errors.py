"""Every way a client can get a request wrong ends as OpenAI's error body with a 4xx, never a 500,
on a real `dukat serve` (the openai SDK's exception classes, and raw HTTP where the SDK can't send it)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.gateway.conftest import Dukat
from tests.support.checks import error_of

CHAT = "tiny/tinyllama"
EMBED = "tiny/bert"
HI = [{"role": "user", "content": "hi"}]
# ~3000 words: several thousand tokens, far past the tiny models' 512 positions.
LONG = "the quick brown fox jumps over the lazy dog " * 340


@pytest.fixture(scope="module")
def client(dukat: Dukat) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=dukat.base_url, api_key="x", max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def http(dukat: Dukat) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=dukat.url, timeout=120) as c:
        yield c


def sdk_error(
    exc: openai.APIStatusError, status: int, code: str | None = None, param: str | None = None
) -> None:
    error = error_of(exc.response, status, code, param)
    # The SDK exposes the same fields.
    assert (exc.code, exc.param, exc.type) == (error["code"], error["param"], error["type"])


# ---- through the openai SDK --------------------------------------------------------------------


def test_unknown_model_is_404_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="tiny/no-such-model", messages=HI)
    sdk_error(caught.value, 404, "model_not_found", "model")
    assert "tiny/no-such-model" in caught.value.message


def test_stream_for_unknown_model_is_a_plain_404(client: openai.OpenAI, http: httpx.Client) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="tiny/no-such-model", messages=HI, stream=True)
    sdk_error(caught.value, 404, "model_not_found")
    # Not a 200 event stream carrying an error event.
    response = http.post(CHAT_PATH, json={"model": "tiny/no-such-model", "messages": HI, "stream": True})
    error_of(response, 404, "model_not_found")


def test_temperature_out_of_range_is_400_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=CHAT, messages=HI, temperature=5)
    sdk_error(caught.value, 400, param="temperature")
    assert "temperature" in caught.value.message


def test_top_logprobs_without_logprobs_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=CHAT, messages=HI, top_logprobs=2)
    sdk_error(caught.value, 400, param="top_logprobs")


def test_image_content_part_is_400(client: openai.OpenAI) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    content = [{"type": "text", "text": "what is this?"}, image]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": content}])
    sdk_error(caught.value, 400)
    assert "image_url" in caught.value.message


def test_n_0_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=CHAT, messages=HI, n=0)
    sdk_error(caught.value, 400, param="n")


def test_empty_messages_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=CHAT, messages=[])
    sdk_error(caught.value, 400, param="messages")


def test_embeddings_of_a_chat_model_is_400_unsupported_task(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=CHAT, input="hi")
    sdk_error(caught.value, 400, "unsupported_task", "model")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_chat_on_the_embedding_model_is_400_unsupported_task(client: openai.OpenAI, stream: bool) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=EMBED, messages=HI, stream=stream)
    sdk_error(caught.value, 400, "unsupported_task", "model")


def test_completions_on_the_embedding_model_is_400_unsupported_task(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=EMBED, prompt="hi")
    sdk_error(caught.value, 400, "unsupported_task", "model")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_chat_longer_than_the_context_is_400_context_length_exceeded(
    client: openai.OpenAI, stream: bool
) -> None:
    messages = [{"role": "user", "content": LONG}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=CHAT, messages=messages, stream=stream)
    sdk_error(caught.value, 400, "context_length_exceeded", "messages")
    assert "512" in caught.value.message


def test_completion_longer_than_the_context_is_400_context_length_exceeded(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=CHAT, prompt=LONG)
    sdk_error(caught.value, 400, "context_length_exceeded", "prompt")


def test_embedding_longer_than_the_context_is_400_context_length_exceeded(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=EMBED, input=["short", LONG])
    sdk_error(caught.value, 400, "context_length_exceeded", "input")


def test_token_ids_outside_the_vocabulary_are_400(dukat: Dukat) -> None:
    # What LangChain's OpenAIEmbeddings sends by default: tiktoken (cl100k) ids, here past BERT's vocabulary.
    body = {"model": EMBED, "input": [[15339, 1917]]}
    resp = httpx.post(f"{dukat.base_url}/embeddings", json=body, timeout=60)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "input"
    message = resp.json()["error"]["message"]
    assert "vocabulary" in message and "check_embedding_ctx_length=False" in message


# ---- raw HTTP ----------------------------------------------------------------------------------

CHAT_PATH, COMPLETIONS_PATH, EMBEDDINGS_PATH = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"


def chat_body(**fields: Any) -> dict[str, Any]:
    return {"model": CHAT, "messages": HI, **fields}


def embed_body(**fields: Any) -> dict[str, Any]:
    return {"model": EMBED, "input": "a", **fields}


def one_message(**message: Any) -> dict[str, Any]:
    return {"model": CHAT, "messages": [message]}


USAGE = {"include_usage": True}
LOOKBEHIND = {"type": "object", "properties": {"a": {"type": "string", "pattern": "(?<=a)b"}}}
LOOKBEHIND_TOOL = {"type": "function", "function": {"name": "f", "parameters": LOOKBEHIND}}
LOOKBEHIND_FORMAT = {"type": "json_schema", "name": "x", "schema": LOOKBEHIND, "strict": True}
# case -> (path, body, the param the error must name; None: any)
BAD_REQUESTS: dict[str, tuple[str, Any, str | None]] = {
    "missing_messages": (CHAT_PATH, {"model": CHAT}, "messages"),
    "messages_not_a_list": (CHAT_PATH, chat_body(messages="hi"), "messages"),
    "unknown_role": (CHAT_PATH, one_message(role="wizard", content="x"), "messages[0].role"),
    "tool_choice_names_no_tool": (
        CHAT_PATH, chat_body(tool_choice={"type": "function", "function": {"name": "f"}}), "tool_choice"
    ),
    "user_without_content": (CHAT_PATH, one_message(role="user"), "messages"),
    # OpenAI's own 400s: stream_options only with stream, tool_choice only with tools.
    "stream_options_without_stream": (CHAT_PATH, chat_body(stream_options=USAGE), "stream_options"),
    "completion_stream_options_without_stream": (
        COMPLETIONS_PATH, {"model": CHAT, "prompt": "hi", "stream_options": USAGE}, "stream_options",
    ),
    "tool_choice_auto_without_tools": (CHAT_PATH, chat_body(tool_choice="auto"), "tool_choice"),
    "tool_choice_none_without_tools": (CHAT_PATH, chat_body(tool_choice="none"), "tool_choice"),
    # Token ids are checked against the model's vocabulary (they were accepted and ignored).
    "logit_bias_past_vocabulary": (CHAT_PATH, chat_body(logit_bias={"999999": 5}), "logit_bias"),
    "logit_bias_key_not_an_id": (CHAT_PATH, chat_body(logit_bias={"hello": 5}), "logit_bias"),
    "logit_bias_over_100": (CHAT_PATH, chat_body(logit_bias={"5": 101}), None),
    "completion_logit_bias_past_vocabulary": (
        COMPLETIONS_PATH, {"model": CHAT, "prompt": "hi", "logit_bias": {"-1": 1}}, "logit_bias",
    ),
    "audio_modality": (CHAT_PATH, chat_body(modalities=["text", "audio"]), "modalities"),
    "audio_output": (CHAT_PATH, chat_body(audio={"voice": "alloy", "format": "wav"}), "audio"),
    "web_search": (CHAT_PATH, chat_body(web_search_options={}), "web_search_options"),
    # A schema the grammar engine can't take is blamed on the field it came from.
    "tool_schema_engine_cant_take": (
        CHAT_PATH, chat_body(tools=[LOOKBEHIND_TOOL], tool_choice="required", max_tokens=20), "tools",
    ),
    "responses_text_format_engine_cant_take": (
        "/v1/responses", {"model": CHAT, "input": "hi", "text": {"format": LOOKBEHIND_FORMAT}}, "text.format",
    ),
    "stop_token_ids_past_vocabulary": (CHAT_PATH, chat_body(stop_token_ids=[10**6]), "stop_token_ids"),
    "max_tokens_0": (CHAT_PATH, chat_body(max_tokens=0), "max_tokens"),
    "top_p_0": (CHAT_PATH, chat_body(top_p=0), "top_p"),
    "body_is_a_list": (CHAT_PATH, [HI], None),
    # Integers past int64 can't cross the worker wire: they used to be 500s.
    "seed_past_int64": (CHAT_PATH, chat_body(seed=2**70), "seed"),
    "max_tokens_past_int64": (CHAT_PATH, chat_body(max_tokens=2**64), "max_tokens"),
    "max_completion_tokens_past_int64": (
        CHAT_PATH, chat_body(max_completion_tokens=2**66), "max_completion_tokens",
    ),
    "top_k_past_int64": (CHAT_PATH, chat_body(top_k=2**66), "top_k"),
    "completion_seed_past_int64": (COMPLETIONS_PATH, {"model": CHAT, "prompt": "hi", "seed": 2**70}, "seed"),
    "completion_token_past_vocabulary": (COMPLETIONS_PATH, {"model": CHAT, "prompt": [1, 10**9]}, "prompt"),
    "completion_empty_prompt_list": (COMPLETIONS_PATH, {"model": CHAT, "prompt": []}, "prompt"),
    "completion_missing_prompt": (COMPLETIONS_PATH, {"model": CHAT}, "prompt"),
    "embedding_token_id_past_int64": (EMBEDDINGS_PATH, embed_body(input=[[2**70]]), "input[0][0]"),
    "embedding_empty_list": (EMBEDDINGS_PATH, embed_body(input=[]), "input"),
    "embedding_mixed_input": (EMBEDDINGS_PATH, embed_body(input=["a", [1]]), "input"),
    "embedding_other_dimensions": (EMBEDDINGS_PATH, embed_body(dimensions=3), "dimensions"),
    "embedding_unknown_format": (EMBEDDINGS_PATH, embed_body(encoding_format="int8"), "encoding_format"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_is_400_naming_the_field(http: httpx.Client, case: str) -> None:
    path, body, param = BAD_REQUESTS[case]
    error = error_of(http.post(path, json=body), 400, param=param)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"model": "tiny/tinyllama", "messages": [] trailing',
        b'{"messages": [{"role": "user", "content": "a\xff\xfe"}]}',
    ],
    ids=["malformed", "truncated", "not_utf8"],
)
def test_body_that_is_not_json_is_400(http: httpx.Client, body: bytes) -> None:
    response = http.post(CHAT_PATH, content=body, headers={"content-type": "application/json"})
    error = error_of(response, 400)
    assert "JSON" in error["message"]


@pytest.mark.parametrize("path", ["/v1/no-such-route", "/no-such-route", "/v1/chat/completion"])
def test_unknown_route_is_404_with_openai_body(http: httpx.Client, path: str) -> None:
    error_of(http.get(path), 404, "not_found")
    error_of(http.post(path, json={}), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", CHAT_PATH), ("GET", COMPLETIONS_PATH), ("GET", EMBEDDINGS_PATH), ("POST", "/v1/models")],
)
def test_wrong_method_is_405(http: httpx.Client, method: str, path: str) -> None:
    error_of(http.request(method, path), 405, "method_not_allowed")


def test_wrong_method_raises_the_sdk_error_for_405(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.get("/chat/completions", cast_to=object)
    assert caught.value.status_code == 405


@pytest.mark.parametrize(
    "extra",
    [{"temperature": 1e-300}, {"repetition_penalty": 1e-300}, {"repetition_penalty": 1e300}, {"top_p": 1e-9}],
    ids=["tiny_temperature", "tiny_repetition_penalty", "huge_repetition_penalty", "tiny_top_p"],
)
def test_extreme_but_valid_sampling_values_generate(http: httpx.Client, extra: dict[str, float]) -> None:
    # They used to overflow float32 logits into inf/NaN in the worker: a 500.
    body = {"model": CHAT, "messages": HI, "max_tokens": 3, "temperature": 1, "seed": 1, **extra}
    response = http.post(CHAT_PATH, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] >= 1


def test_a_tool_choice_naming_an_unknown_function_is_a_400_naming_tool_choice(dukat: Dukat) -> None:
    client = openai.OpenAI(base_url=dukat.base_url, api_key="x", max_retries=0)
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    messages: list = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="tiny/tinyllama", messages=messages, tools=[tool],
            tool_choice={"type": "function", "function": {"name": "g"}},
        )
    assert caught.value.param == "tool_choice" and "'g'" in caught.value.message
    # tool_choice "none" with tools, and a text response_format, are plain chat requests.
    out = client.chat.completions.create(
        model="tiny/tinyllama", messages=messages, tools=[tool], tool_choice="none",
        response_format={"type": "text"}, max_tokens=2,
    )
    assert out.choices[0].message.content is not None and out.choices[0].message.tool_calls is None
