"""`POST /v1/responses` through the openai SDK: plain, streamed (OpenAI's event sequence, each event
valid against OpenAI's schema), function tools and their outputs, text.format; statelessness is a 400."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.gateway.conftest import Dukat
from tests.support.openapi_check import validate

CHAT = "tiny/tinyllama"
PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOL: Any = {"type": "function", "name": "get_weather", "parameters": PARAMS, "strict": True}


@pytest.fixture(scope="module")
def client(dukat: Dukat) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=dukat.base_url, api_key="x", max_retries=0, timeout=120) as c:
        yield c


def test_a_plain_response_validates_and_has_output_text(client: openai.OpenAI) -> None:
    out = client.responses.create(
        model=CHAT, input="Say hi", instructions="Be brief.", max_output_tokens=6, temperature=0
    )
    validate(out.model_dump(mode="json", exclude_unset=True), "Response")
    assert out.id.startswith("resp_") and out.output_text and out.usage and out.usage.output_tokens <= 6
    assert out.status in ("completed", "incomplete") and out.output[0].type == "message"


def test_a_streamed_response_follows_openais_event_sequence(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {"model": CHAT, "input": "Say hi", "max_output_tokens": 6, "temperature": 0}
    whole = client.responses.create(**kwargs)
    events = list(client.responses.create(**kwargs, stream=True))
    for event in events:
        validate(event.model_dump(mode="json", exclude_unset=True), "ResponseStreamEvent")
    types = [e.type for e in events]
    deltas = types.count("response.output_text.delta")
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        f"response.{whole.status}",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    assert text == whole.output_text == events[-1].response.output_text  # type: ignore[union-attr]


def test_a_function_tool_call_and_its_output_continue_the_conversation(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model=CHAT, input="Weather in Paris?", tools=[TOOL], tool_choice="required", max_output_tokens=48
    )
    validate(first.model_dump(mode="json", exclude_unset=True), "Response")
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and calls[0].call_id.startswith("call_")
    jsonschema.validate(json.loads(calls[0].arguments), PARAMS)
    follow_up: list[Any] = [
        {"role": "user", "content": "Weather in Paris?"},
        *[c.model_dump(exclude_unset=True) for c in calls],
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "18 C and sunny"},
    ]
    second = client.responses.create(model=CHAT, input=follow_up, tools=[TOOL], max_output_tokens=4)
    assert second.output and second.status in ("completed", "incomplete")


def test_streamed_function_calls_have_argument_events(client: openai.OpenAI) -> None:
    named: Any = {"type": "function", "name": "get_weather"}
    events = list(
        client.responses.create(
            model=CHAT, input="Weather?", tools=[TOOL], tool_choice=named, max_output_tokens=48, stream=True
        )
    )
    types = [e.type for e in events]
    assert "response.function_call_arguments.delta" in types and types[-1] == "response.completed"
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    jsonschema.validate(json.loads(done.arguments), PARAMS)  # type: ignore[union-attr]


def test_text_format_json_schema_is_followed(client: openai.OpenAI) -> None:
    fmt: Any = {"type": "json_schema", "name": "city", "schema": PARAMS, "strict": True}
    out = client.responses.create(model=CHAT, input="A city?", text={"format": fmt}, max_output_tokens=40)
    jsonschema.validate(json.loads(out.output_text), PARAMS)


def test_state_is_not_kept_and_asking_for_it_is_a_400(client: openai.OpenAI, dukat: Dukat) -> None:
    with pytest.raises(openai.BadRequestError) as previous:
        client.responses.create(model=CHAT, input="hi", previous_response_id="resp_123", max_output_tokens=2)
    assert previous.value.param == "previous_response_id" and "stateless" in previous.value.message
    retrieved = httpx.get(f"{dukat.base_url}/responses/resp_123", timeout=30)
    assert retrieved.status_code == 400 and "not stored" in retrieved.json()["error"]["message"]
