"""The JSON guarantee through the public APIs: every schema feature the README lists ($ref/$defs,
allOf, minLength, maxLength, pattern, arrays of bounded strings, pydantic nested models) gives output
that parses and validates, on a random-weight model, over many seeds, through chat
(`response_format`, forced tool calls), Responses (`text.format`, forced function calls) and the
vLLM `structured_outputs` extension, streamed and not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.gateway.conftest import Dukat

CHAT = "tiny/tinyllama"
SEEDS = range(6)


class Pet(BaseModel):
    kind: str = Field(min_length=2, max_length=8)
    legs: int


class Owner(BaseModel):
    name: str = Field(min_length=3)
    code: str = Field(pattern=r"^[A-Z]{2}[0-9]$")
    tags: list[str] = Field(min_length=1, max_length=2)
    pets: list[Pet] = Field(max_length=2)
    best: Pet | None = None


def owner_schema() -> dict[str, Any]:
    """Pydantic's schema ($defs, $ref, anyOf) with bounded strings in arrays, made strict."""
    schema = Owner.model_json_schema()
    schema["properties"]["tags"]["items"] = {"type": "string", "minLength": 1, "maxLength": 4}
    schema["allOf"] = [{"required": ["name"]}]
    return schema


class Tag(BaseModel):
    t: str = Field(min_length=1, max_length=4)


class Tagged(BaseModel):
    tags: list[Tag] = Field(min_length=1, max_length=2)


def untitled(schema: Any) -> Any:
    """A schema without its titles (the tools are rendered into the tiny model's 512-token context)."""
    if isinstance(schema, dict):
        return {k: untitled(v) for k, v in schema.items() if k != "title"}
    return schema


OWNER = owner_schema()
TAGGED = untitled(Tagged.model_json_schema())  # pydantic's $defs/$ref, bounded strings
ASK = [{"role": "user", "content": "Describe an owner."}]


@pytest.fixture(scope="module")
def client(dukat: Dukat) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=dukat.base_url, api_key="x", max_retries=0, timeout=120) as c:
        yield c


def chat_text(client: openai.OpenAI, stream: bool, **kwargs: Any) -> tuple[str, str | None]:
    if not stream:
        choice = client.chat.completions.create(model=CHAT, messages=ASK, **kwargs).choices[0]  # type: ignore[arg-type]
        return choice.message.content or "", choice.finish_reason
    chunks = list(client.chat.completions.create(model=CHAT, messages=ASK, stream=True, **kwargs))  # type: ignore[arg-type]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, [c.choices[0].finish_reason for c in chunks if c.choices][-1]


def chat_calls(client: openai.OpenAI, stream: bool, **kwargs: Any) -> list[tuple[str, str]]:
    if not stream:
        message = client.chat.completions.create(model=CHAT, messages=ASK, **kwargs).choices[0].message  # type: ignore[arg-type]
        return [(c.function.name, c.function.arguments) for c in message.tool_calls or []]  # type: ignore[union-attr]
    calls: dict[int, list[str]] = {}
    for chunk in client.chat.completions.create(model=CHAT, messages=ASK, stream=True, **kwargs):  # type: ignore[arg-type]
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            call = calls.setdefault(delta.index, ["", ""])
            call[0] += delta.function.name or "" if delta.function else ""
            call[1] += delta.function.arguments or "" if delta.function else ""
    return [(name, arguments) for name, arguments in calls.values()]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_chat_json_schema_outputs_parse_and_validate_for_every_seed(
    client: openai.OpenAI, stream: bool
) -> None:
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "owner", "schema": OWNER, "strict": True}}
    for seed in SEEDS:
        text, finish = chat_text(
            client, stream, response_format=fmt, max_tokens=160, temperature=1.5, seed=seed
        )
        jsonschema.validate(json.loads(text), OWNER)
        assert finish == "stop"


def test_vllm_structured_outputs_json_parses_and_validates(client: openai.OpenAI) -> None:
    schema = {"type": "array", "items": {"type": "string", "maxLength": 3}, "minItems": 2}
    for seed in SEEDS:
        text, _ = chat_text(
            client,
            False,
            max_tokens=64,
            temperature=1.5,
            seed=seed,
            extra_body={"structured_outputs": {"json": schema}},
        )
        jsonschema.validate(json.loads(text), schema)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("choice", ["required", "named"])
def test_forced_chat_tool_calls_with_refs_and_bounded_strings_validate(
    client: openai.OpenAI, stream: bool, choice: str
) -> None:
    # One tool: the tiny model's context (512) holds its description and a call with room to spare.
    tools: Any = [{"type": "function", "function": {"name": "tag", "parameters": TAGGED}}]
    tool_choice: Any = choice if choice == "required" else {"type": "function", "function": {"name": "tag"}}
    for seed in SEEDS:
        calls = chat_calls(
            client, stream, tools=tools, tool_choice=tool_choice, max_tokens=80, temperature=1.5, seed=seed
        )
        assert calls, f"seed {seed}: no tool call"
        for name, arguments in calls:
            assert name == "tag"
            jsonschema.validate(json.loads(arguments), TAGGED)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_responses_text_format_outputs_parse_and_validate(client: openai.OpenAI, stream: bool) -> None:
    fmt: Any = {"type": "json_schema", "name": "owner", "schema": OWNER, "strict": True}
    for _ in SEEDS:
        kwargs: Any = {"model": CHAT, "input": "An owner?", "text": {"format": fmt}, "max_output_tokens": 160}
        if stream:
            events = list(client.responses.create(**kwargs, temperature=1.5, stream=True))
            text = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
        else:
            text = client.responses.create(**kwargs, temperature=1.5).output_text
        jsonschema.validate(json.loads(text), OWNER)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_responses_required_function_calls_with_refs_validate(client: openai.OpenAI, stream: bool) -> None:
    tools: Any = [{"type": "function", "name": "tag", "parameters": TAGGED, "strict": False}]
    for seed in SEEDS:
        kwargs: Any = {"model": CHAT, "input": "Add one.", "tools": tools, "tool_choice": "required"}
        kwargs.update(max_output_tokens=80, temperature=1.5)
        if stream:
            events = list(client.responses.create(**kwargs, stream=True))
            output = events[-1].response.output  # type: ignore[union-attr]
        else:
            output = client.responses.create(**kwargs).output
        calls = [item for item in output if item.type == "function_call"]
        assert calls, f"seed {seed}: no function call"
        for call in calls:
            jsonschema.validate(json.loads(call.arguments), TAGGED)  # type: ignore[union-attr]
