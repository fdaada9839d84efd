"""The public OpenAI wire: requests as real clients send them, responses checked against OpenAI's schemas."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import numpy as np
import openai.types as openai_types
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from gateway.schemas import (
    ChatChunks,
    ChatCompletionRequest,
    ChoiceEvent,
    CompletionChunks,
    CompletionRequest,
    EmbeddingRequest,
    chat_response,
    completion_response,
    embedding_response,
)
from gateway.schemas.models import LoadRequest, Model, ModelList
from shared.errors import InvalidRequestError, ModelNotFoundError
from shared.generation import EmbedResult, GenerateResult, SamplingParams, TextPart
from tests.support.openapi_check import validate


def decode(body: dict[str, object], cls: type[msgspec.Struct]) -> msgspec.Struct:
    return msgspec.json.decode(msgspec.json.encode(body), type=cls)


def chat(body: dict[str, object]) -> ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}
    return msgspec.json.decode(msgspec.json.encode(body), type=ChatCompletionRequest)


def result(text: str = "hello", reason: str = "stop", prompt: int = 5, completion: int = 2) -> GenerateResult:
    return msgspec.convert(
        {"text": text, "finish_reason": reason, "prompt_tokens": prompt, "completion_tokens": completion},
        GenerateResult,
    )


def to_json(obj: object) -> object:
    return msgspec.json.decode(msgspec.json.encode(obj))


async def collect(chunks: AsyncIterator[Any]) -> list[object]:
    """Every chunk in order; a tuple is several chunks sent in one write."""
    return [to_json(c) async for item in chunks for c in (item if isinstance(item, tuple) else (item,))]


async def events(*items: ChoiceEvent) -> AsyncIterator[ChoiceEvent]:
    for item in items:
        yield item


# --- requests -------------------------------------------------------------------------------------


def test_chat_request_from_langchain_payload_decodes() -> None:
    from langchain_core.messages import HumanMessage, SystemMessage
    from langchain_openai import ChatOpenAI

    options: dict[str, Any] = {
        "base_url": "http://127.0.0.1:9/v1",
        "api_key": "k",
        "max_tokens": 20,
        "stop": ["x"],
    }
    llm = ChatOpenAI(model="m", **options)
    payload = llm._get_request_payload(
        [SystemMessage("be brief"), HumanMessage([{"type": "text", "text": "hi"}])]
    )
    request = decode(payload, ChatCompletionRequest)
    assert isinstance(request, ChatCompletionRequest)
    params = request.sampling_params()
    assert params.max_new_tokens == 20 and params.stop == ["x"]
    assert request.messages[1].content == [TextPart(text="hi")]


def test_chat_request_accepts_null_for_every_optional_field() -> None:
    optional = [f for f in ChatCompletionRequest.__struct_fields__ if f != "messages"]
    request = chat(dict.fromkeys(optional))
    assert request.model is None and request.choices == 1 and not request.include_usage
    unset = dict.fromkeys(SamplingParams.__struct_fields__)
    assert msgspec.structs.asdict(request.sampling_params()) == unset


def test_chat_request_ignores_unknown_fields() -> None:
    request = chat({"logit_bias": {"1": 2}, "response_format": {"type": "text"}, "metadata": {"a": "b"}})
    assert request.model == "m"


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert chat({"max_tokens": 9, "max_completion_tokens": 5}).sampling_params().max_new_tokens == 5
    assert chat({"max_tokens": 9}).sampling_params().max_new_tokens == 9


@pytest.mark.parametrize(
    ("stop", "expected"),
    [("END", ["END"]), (["a", "b", "c", "d", "e"], ["a", "b", "c", "d", "e"]), (["", "x"], ["x"])],
)
def test_stop_as_string_or_list(stop: object, expected: list[str]) -> None:
    assert chat({"stop": stop}).sampling_params().stop == expected


def test_extension_fields_reach_sampling_params() -> None:
    params = chat(
        {"top_k": -1, "repetition_penalty": 1.1, "temperature": 0, "top_p": 1, "seed": 7}
    ).sampling_params()
    assert (params.top_k, params.repetition_penalty, params.temperature, params.seed) == (0, 1.1, 0.0, 7)


@pytest.mark.parametrize(
    ("field", "value", "path"),
    [
        ("temperature", 2.5, "$.temperature"),
        ("top_p", 0, "$.top_p"),
        ("n", 0, "$.n"),
        ("max_tokens", 0, "$.max_tokens"),
        ("max_completion_tokens", -1, "$.max_completion_tokens"),
        ("presence_penalty", 3, "$.presence_penalty"),
        ("messages", [], "$.messages"),
        ("messages", [{"role": "robot", "content": "x"}], "$.messages[0].role"),
    ],
)
def test_out_of_range_fields_fail_naming_the_field(field: str, value: object, path: str) -> None:
    with pytest.raises(msgspec.ValidationError) as info:
        chat({field: value})
    assert str(info.value).endswith(f"at `{path}`")


def test_top_logprobs_without_logprobs_is_a_400_naming_top_logprobs() -> None:
    assert chat({"logprobs": False, "top_logprobs": None}).sampling_params() is not None
    assert chat({"logprobs": True, "top_logprobs": 3}).generate_requests("r")[0].logprobs == 3
    with pytest.raises(InvalidRequestError) as info:
        chat({"top_logprobs": 3}).sampling_params()
    assert info.value.param == "top_logprobs" and info.value.status == 400


def test_non_text_content_part_is_a_400_naming_the_part() -> None:
    audio = {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}
    request = chat({"messages": [{"role": "user", "content": [{"type": "text", "text": "see"}, audio]}]})
    with pytest.raises(InvalidRequestError) as info:
        request.sampling_params()
    assert info.value.param == "messages[0].content[1]"


def test_n_seeded_choices_get_distinct_seeds() -> None:
    assert [p.seed for p in chat({"n": 3, "seed": 10}).choice_params()] == [10, 11, 12]
    assert [p.seed for p in chat({"n": 2}).choice_params()] == [None, None]


def test_completion_request_from_langchain_llm_params() -> None:
    body = {
        "model": "m",
        "prompt": ["Say hi"],
        "temperature": 0.7,
        "top_p": 1,
        "frequency_penalty": 0,
        "presence_penalty": 0,
        "n": 1,
        "seed": None,
        "logprobs": None,
        "max_tokens": 256,
    }
    request = decode(body, CompletionRequest)
    assert isinstance(request, CompletionRequest)
    assert request.prompts() == ["Say hi"] and request.sampling_params().max_new_tokens == 256


def test_completion_max_tokens_defaults_to_openais_16() -> None:
    request = decode({"prompt": "x", "max_tokens": None}, CompletionRequest)
    assert isinstance(request, CompletionRequest) and request.sampling_params().max_new_tokens == 16


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"prompt": [1, "x"]}, "prompt"),
        ({"prompt": [[1, 2], []]}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"suffix": "end"}, "suffix"),
        ({"prompt": [[1, 2]], "echo": True, "stream": True}, "echo"),
        ({"best_of": 3, "n": 1}, "best_of"),
    ],
)
def test_unsupported_completion_options_are_400s(extra: dict[str, object], param: str) -> None:
    request = decode({"prompt": "x", **extra}, CompletionRequest)
    assert isinstance(request, CompletionRequest)
    with pytest.raises(InvalidRequestError) as info:
        request.sampling_params()
    assert info.value.param == param


@pytest.mark.parametrize(
    ("value", "expected"),
    [("a", ["a"]), (["a", "b"], ["a", "b"]), ([1, 2], [[1, 2]]), ([[1, 2], [3]], [[1, 2], [3]])],
)
def test_embedding_inputs_text_or_token_ids(value: object, expected: object) -> None:
    request = decode(
        {"model": "e", "input": value, "encoding_format": None, "dimensions": None}, EmbeddingRequest
    )
    assert isinstance(request, EmbeddingRequest) and request.inputs() == expected


@pytest.mark.parametrize("value", [[], ["a", 1], [[1], "a"], [[]]])
def test_bad_embedding_inputs_are_400s(value: object) -> None:
    request = decode({"input": value}, EmbeddingRequest)
    assert isinstance(request, EmbeddingRequest)
    with pytest.raises(InvalidRequestError) as info:
        request.inputs()
    assert info.value.param == "input"


def test_management_requests_forbid_unknown_fields() -> None:
    assert decode({"model": "m", "quantization": "8bit"}, LoadRequest) == LoadRequest(
        model_id="m", quantization="8bit"
    )
    with pytest.raises(msgspec.ValidationError, match="unknown field `quantisation`"):
        decode({"model": "m", "quantisation": "8bit"}, LoadRequest)
    with pytest.raises(msgspec.ValidationError, match="quantization"):
        decode({"model": "m", "quantization": "3bit"}, LoadRequest)


# --- responses ------------------------------------------------------------------------------------


def test_chat_response_with_n_choices_validates() -> None:
    response = to_json(chat_response([result("a"), result("b", "length", completion=3)], "m", "r1"))
    validate(response, "CreateChatCompletionResponse")
    ChatCompletion.model_validate(response)
    assert response["id"] == "chatcmpl-r1"  # type: ignore[index]
    assert response["usage"] == {  # type: ignore[index]
        "prompt_tokens": 5,
        "completion_tokens": 5,
        "total_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert [c["finish_reason"] for c in response["choices"]] == ["stop", "length"]  # type: ignore[index]
    assert response["choices"][0]["message"] == {"role": "assistant", "content": "a", "refusal": None}  # type: ignore[index]


def test_cancelled_maps_to_stop() -> None:
    response = to_json(chat_response([result(reason="cancelled")], "m", "r"))
    validate(response, "CreateChatCompletionResponse")
    assert response["choices"][0]["finish_reason"] == "stop"  # type: ignore[index]


async def test_chat_stream_chunks_validate_and_follow_openais_order() -> None:
    chunks = ChatChunks(model="m", request_id="r", include_usage=True, created=1)
    out = await collect(chunks.stream(events((0, "Hel"), (0, "lo"), (0, result("Hello")))))
    for chunk in out:
        validate(chunk, "CreateChatCompletionStreamResponse")
        ChatCompletionChunk.model_validate(chunk)
    deltas = [c["choices"][0]["delta"] if c["choices"] else None for c in out]  # type: ignore[index]
    assert deltas == [{"role": "assistant", "content": ""}, {"content": "Hel"}, {"content": "lo"}, {}, None]
    assert [c["usage"] for c in out[:-1]] == [None] * 4  # type: ignore[index]
    assert out[-1]["usage"]["total_tokens"] == 7  # type: ignore[index]
    assert {c["id"] for c in out} == {"chatcmpl-r"}  # type: ignore[index]


async def test_chat_stream_without_include_usage_has_no_usage_key() -> None:
    chunks = ChatChunks(model="m", request_id="r")
    out = await collect(chunks.stream(events((1, "a"), (0, "b"), (1, result()), (0, result()))))
    assert all("usage" not in c for c in out)  # type: ignore[operator]
    roles = [c["choices"][0]["index"] for c in out if c["choices"][0]["delta"].get("role")]  # type: ignore[index]
    assert roles == [1, 0]


def test_completion_response_with_echo_and_n_validates() -> None:
    results = [result("1"), result("2"), result("3", prompt=4), result("4", prompt=4)]
    for r, echoed in zip(results, ["p:", "p:", "q:", "q:"], strict=True):
        r.prompt_text = echoed  # the worker returns an echoed prompt's text
    response = to_json(completion_response(results, "m", "r", n=2))
    validate(response, "CreateCompletionResponse")
    openai_types.Completion.model_validate(response)
    assert [c["text"] for c in response["choices"]] == ["p:1", "p:2", "q:3", "q:4"]  # type: ignore[index]
    assert response["usage"]["prompt_tokens"] == 9  # type: ignore[index]


async def test_completion_stream_chunks_validate() -> None:
    chunks = CompletionChunks(model="m", request_id="r", include_usage=True, echo_prompts=["p"])
    out = await collect(chunks.stream(events((0, "a"), (0, result("a")))))
    assert [c["choices"][0]["text"] for c in out[:-1]] == ["p", "a", ""]  # type: ignore[index]
    for chunk in out[:-1]:
        choice = chunk["choices"][0]  # type: ignore[index]
        if choice["finish_reason"] is None:
            # OpenAI streams null until a choice ends, but its schema has no null there: check the rest.
            chunk = {**chunk, "choices": [{**choice, "finish_reason": "stop"}]}  # type: ignore[dict-item]
        validate(chunk, "CreateCompletionResponse")
    validate(out[-1], "CreateCompletionResponse")
    assert out[-1]["choices"] == [] and out[-1]["usage"]["completion_tokens"] == 2  # type: ignore[index]


@pytest.mark.parametrize("encoding", ["float", "base64", None])
def test_embedding_response_validates(encoding: str | None) -> None:
    vectors = [[0.25, -1.5, 3.0], [1e-3, 2.0, -0.1]]
    embedded = EmbedResult(vectors=vectors, prompt_tokens=4)
    response = to_json(embedding_response(embedded, "e", encoding_format=encoding))  # type: ignore[arg-type]
    data = response["data"]  # type: ignore[index]
    if encoding == "base64":
        decoded = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="float32").tolist() for d in data]
        assert np.allclose(decoded, vectors)
        for d, v in zip(data, decoded, strict=True):
            d["embedding"] = v
    validate(response, "CreateEmbeddingResponse")
    openai_types.CreateEmbeddingResponse.model_validate(response)
    assert response["usage"] == {"prompt_tokens": 4, "total_tokens": 4}  # type: ignore[index]


def test_embedding_dimensions_other_than_the_models_is_a_400() -> None:
    result_ = EmbedResult(vectors=[[0.0, 1.0]], prompt_tokens=1)
    assert embedding_response(result_, "e", dimensions=2).data[0].embedding == [0.0, 1.0]
    with pytest.raises(InvalidRequestError) as info:
        embedding_response(result_, "e", dimensions=3)
    assert info.value.param == "dimensions"


def test_model_list_with_dukat_fields_validates() -> None:
    model = Model(
        id="org/m",
        created=1,
        owned_by="dukat",
        state="loaded",
        device="cpu",
        quantization="none",
        model_type="llama",
        task="chat",
        description="tiny",
        default=True,
    )
    listing = to_json(ModelList(data=[model, Model(id="e", created=2, owned_by="dukat")]))
    validate(listing, "ListModelsResponse")
    validate(listing["data"][0], "Model")  # type: ignore[index]
    parsed = openai_types.Model.model_validate(listing["data"][0])  # type: ignore[index]
    assert parsed.model_extra is not None
    assert parsed.model_extra["state"] == "loaded" and parsed.model_extra["default"] is True


def test_error_body_validates() -> None:
    validate(to_json(ModelNotFoundError("no model 'x'", param="model").body()), "ErrorResponse")
    validate(to_json(InvalidRequestError("bad").body()), "ErrorResponse")


def test_token_id_prompts_are_one_or_many_prompts() -> None:
    one = decode({"prompt": [1, 2, 3]}, CompletionRequest)
    many = decode({"prompt": [[1, 2], [3]], "logprobs": 2, "echo": True, "max_tokens": 0}, CompletionRequest)
    assert isinstance(one, CompletionRequest) and isinstance(many, CompletionRequest)
    assert [r.prompt_ids for r in one.generate_requests("r")] == [[1, 2, 3]]
    (a, b) = many.generate_requests("r")
    assert (a.prompt_ids, b.prompt_ids, a.logprobs, a.echo) == ([1, 2], [3], 2, True)
    assert a.params.max_new_tokens == 0


def test_tool_choice_plans_the_worker_side() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    auto = chat({"tools": [tool]}).generate_requests("r")[0]
    assert auto.tools is not None and auto.tools.parsing == "auto" and auto.constraint is None
    one_call = {"tools": [tool], "tool_choice": "required", "parallel_tool_calls": False}
    required = chat(one_call).generate_requests("r")[0]
    assert required.tools is not None and required.tools.parsing == "calls"
    assert required.constraint is not None and '"maxItems":1' in (required.constraint.schema or "")
    named = chat({"tools": [tool], "tool_choice": {"type": "function", "function": {"name": "f"}}})
    assert named.generate_requests("r")[0].constraint is not None
    legacy = chat({"functions": [tool["function"]], "function_call": {"name": "f"}})
    assert legacy.legacy_functions and legacy.generate_requests("r")[0].tools.parsing == "arguments"  # type: ignore[union-attr]
    assert chat({"tools": [tool], "tool_choice": "none"}).generate_requests("r")[0].tools is None
