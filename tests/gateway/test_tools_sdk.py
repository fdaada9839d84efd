"""Tool calls, structured outputs and logprobs through the real `openai` SDK against the shared
`dukat serve` (tiny random-weight models: constrained decoding makes their output well-formed)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel

from tests.gateway.conftest import Dukat
from tests.support.openapi_check import validate

CHAT = "tiny/tinyllama"  # a template without tool support: the generic format
HERMES = "tiny/hermes"  # a template that renders tools itself
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather now", "parameters": WEATHER_PARAMS},
    },
    {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
    },
]
HISTORY: list[Any] = [
    *ASK,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_abc",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_abc", "content": "18 degrees, sunny"},
]


@pytest.fixture(scope="module")
def client(dukat: Dukat) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=dukat.base_url, api_key="x", max_retries=0, timeout=120) as c:
        yield c


def check_call(call: Any, name: str | None = None) -> dict[str, Any]:
    assert call.id.startswith("call_") and call.type == "function"
    assert name is None or call.function.name == name
    arguments = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        jsonschema.validate(arguments, WEATHER_PARAMS)
    return arguments


@pytest.mark.parametrize("model", [CHAT, HERMES])
def test_required_tool_choice_returns_valid_calls(client: openai.OpenAI, model: str) -> None:
    out = client.chat.completions.create(
        model=model, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=64, seed=1
    )
    validate(out.model_dump(mode="json", exclude_unset=True), "CreateChatCompletionResponse")
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    for call in choice.message.tool_calls:
        check_call(call)


def test_a_named_tool_choice_calls_that_function(client: openai.OpenAI) -> None:
    named: Any = {"type": "function", "function": {"name": "get_weather"}}
    out = client.chat.completions.create(
        model=CHAT,
        messages=HISTORY,
        tools=TOOLS[:1],
        tool_choice=named,
        max_tokens=40,
        temperature=1.0,
        seed=2,
    )
    (call,) = out.choices[0].message.tool_calls or []
    check_call(call, "get_weather")


def test_streamed_tool_deltas_rebuild_the_same_calls(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {
        "model": CHAT,
        "messages": ASK,
        "tools": TOOLS,
        "tool_choice": "required",
        "max_tokens": 64,
        "temperature": 0,
    }
    whole = client.chat.completions.create(**kwargs).choices[0].message.tool_calls
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    firsts = [d for d in deltas if d.id is not None]
    assert all(d.index is not None for d in deltas) and [d.type for d in firsts] == ["function"] * len(firsts)
    assert all(d.function.name for d in firsts)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    with client.chat.completions.stream(**kwargs) as stream:
        final = stream.get_final_completion().choices[0].message.tool_calls
    assert whole and final
    assert [(c.function.name, c.function.arguments) for c in final] == [
        (c.function.name, c.function.arguments) for c in whole
    ]


@pytest.mark.parametrize("model", [CHAT, HERMES, "tiny/mistral"])
def test_a_history_with_tool_calls_and_results_continues(client: openai.OpenAI, model: str) -> None:
    out = client.chat.completions.create(model=model, messages=HISTORY, tools=TOOLS[:1], max_tokens=4)
    assert out.choices[0].finish_reason in ("stop", "length", "tool_calls")
    without_tools = client.chat.completions.create(model=model, messages=HISTORY, max_tokens=4)
    assert without_tools.choices[0].message.tool_calls is None


def test_legacy_functions_get_a_function_call(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(
        model=CHAT,
        messages=ASK,
        functions=[TOOLS[0]["function"]],
        function_call={"name": "get_weather"},
        max_tokens=40,
    )
    choice = out.choices[0]
    assert choice.finish_reason == "function_call" and choice.message.function_call is not None
    jsonschema.validate(json.loads(choice.message.function_call.arguments), WEATHER_PARAMS)


class Pet(BaseModel):
    kind: str
    legs: int


class Person(BaseModel):
    name: str
    age: int
    height: float
    member: bool
    role: Literal["admin", "user", "guest"]
    pets: list[Pet]


def test_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    for seed in range(3):
        out = client.chat.completions.parse(
            model=CHAT, messages=ASK, response_format=Person, max_tokens=200, temperature=1.0, seed=seed
        )
        assert isinstance(out.choices[0].message.parsed, Person)


def test_json_object_mode_returns_an_object(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(
        model=CHAT, messages=ASK, response_format={"type": "json_object"}, max_tokens=40, temperature=1.0
    )
    assert isinstance(json.loads(out.choices[0].message.content or ""), dict)


def test_schema_problems_are_400s_naming_the_cause(client: openai.OpenAI) -> None:
    lookbehind = {
        "type": "json_schema",
        "json_schema": {
            "name": "x",
            "strict": True,
            "schema": {"type": "object", "properties": {"a": {"type": "string", "pattern": "(?<=a)b"}}},
        },
    }
    with pytest.raises(openai.BadRequestError) as bad_schema:
        client.chat.completions.create(model=CHAT, messages=ASK, response_format=lookbehind, max_tokens=20)
    assert "Lookbehind" in bad_schema.value.message and bad_schema.value.param == "response_format"
    lookbehind["json_schema"]["strict"] = False  # best effort: any JSON object
    loose = client.chat.completions.create(
        model=CHAT, messages=ASK, response_format=lookbehind, max_tokens=20
    )
    assert isinstance(json.loads(loose.choices[0].message.content or ""), dict)
    with pytest.raises(openai.BadRequestError) as too_small:
        client.chat.completions.parse(model=CHAT, messages=ASK, response_format=Person, max_tokens=5)
    assert too_small.value.param == "max_tokens"


def test_chat_logprobs_streamed_and_not(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {
        "model": CHAT,
        "messages": ASK,
        "max_tokens": 5,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 2,
    }
    out = client.chat.completions.create(**kwargs)
    validate(out.model_dump(mode="json", exclude_unset=True), "CreateChatCompletionResponse")
    content = out.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content and len(content) == out.usage.completion_tokens  # type: ignore[union-attr]
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].token == t.token and t.bytes for t in content)
    streamed = [
        t
        for c in client.chat.completions.create(**kwargs, stream=True)
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content or []
    ]
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content]


def test_completion_logprobs_echo_and_scoring_token_id_prompts(client: openai.OpenAI) -> None:
    text = client.completions.create(model=CHAT, prompt="The cat", max_tokens=3, logprobs=2, temperature=0)
    logprobs = text.choices[0].logprobs
    assert logprobs and len(logprobs.tokens or []) == 3 and len(logprobs.top_logprobs or []) == 3
    scored = client.completions.create(
        model=CHAT, prompt=[[300, 301, 302], [303, 304]], max_tokens=0, echo=True, logprobs=1
    )
    body = scored.model_dump(mode="json", exclude_unset=True)
    # OpenAI writes null for the first echoed token, which its own schema doesn't allow: check the rest.
    for choice in body["choices"]:
        choice["logprobs"]["token_logprobs"][0], choice["logprobs"]["top_logprobs"][0] = 0.0, {}
    validate(body, "CreateCompletionResponse")
    first, second = scored.choices
    assert first.logprobs and first.logprobs.token_logprobs and first.logprobs.token_logprobs[0] is None
    assert len(first.logprobs.token_logprobs) == 3 and all(lp < 0 for lp in first.logprobs.token_logprobs[1:])
    assert second.logprobs and len(second.logprobs.tokens or []) == 2
    assert first.text == "".join(first.logprobs.tokens or [])
    assert scored.usage and scored.usage.completion_tokens == 0 and scored.usage.prompt_tokens == 5


def test_vllm_extensions_change_generation(client: openai.OpenAI) -> None:
    extra = {"min_tokens": 12, "ignore_eos": True, "stop_token_ids": [], "skip_special_tokens": True}
    out = client.completions.create(
        model=CHAT, prompt="Once", max_tokens=12, extra_body=extra, temperature=1.0
    )
    assert out.usage and out.usage.completion_tokens == 12
    choice = client.chat.completions.create(
        model=CHAT, messages=ASK, max_tokens=8, extra_body={"structured_outputs": {"choice": ["yes", "no"]}}
    )
    assert choice.choices[0].message.content in ("yes", "no")


# A Hermes-format call written by the model (forced here with vLLM's regex extension, since random
# weights never write one): tool_choice auto must find it, streamed and not, after the text before it.
HERMES_REPLY = r'Checking\. <tool_call>\n\{"name": "get_time", "arguments": \{\}\}\n</tool_call>'


def test_auto_tool_choice_reads_the_models_own_call_format(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {
        "model": HERMES,
        "messages": ASK,
        "tools": TOOLS[1:],
        "max_tokens": 64,
        "extra_body": {"structured_outputs": {"regex": HERMES_REPLY}},
    }
    whole = client.chat.completions.create(**kwargs)
    message = whole.choices[0].message
    assert whole.choices[0].finish_reason == "tool_calls" and message.content == "Checking. "
    assert [(c.function.name, c.function.arguments) for c in message.tool_calls or []] == [("get_time", "{}")]
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    calls = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert text == "Checking. " and calls[0].function.name == "get_time" and calls[0].id.startswith("call_")
    assert "<tool_call>" not in text
