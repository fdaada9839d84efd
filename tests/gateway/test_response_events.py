"""The Responses stream's event sequence for a reasoning model's reply (a pure function of the
generation's items): the thinking streams as `response.reasoning_text.delta` events in a reasoning
item at output 0, closed when the answer's message opens at output 1; every event is one of OpenAI's
`ResponseStreamEvent`s."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from gateway.schemas.common import ChoiceEvent
from gateway.schemas.response_events import response_stream
from gateway.schemas.responses import CreateResponseRequest, response_shell
from shared.generation import FunctionCall, GenerateResult, Reasoning, ToolCall
from tests.support.openapi_check import validate


def _events(items: list[str | Reasoning | GenerateResult]) -> list[dict[str, Any]]:
    async def source() -> AsyncIterator[ChoiceEvent]:
        for item in items:
            yield 0, item

    async def collect() -> list[Any]:
        shell = response_shell(CreateResponseRequest(input="Hi"), "m", "req", 0, None)
        out: list[Any] = []
        async for batch in response_stream(source(), shell):
            out += batch if isinstance(batch, tuple) else [batch]
        return out

    events = [json.loads(msgspec.json.encode(e)) for e in asyncio.run(collect())]
    for event in events:
        validate(event, "ResponseStreamEvent")
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def _shape(events: list[dict[str, Any]]) -> list[tuple[str, int | None]]:
    return [(e["type"], e.get("output_index")) for e in events]


def test_thinking_streams_in_a_reasoning_item_before_the_message() -> None:
    result = GenerateResult(text="Hello there", reasoning="Thinking.", finish_reason="stop", prompt_tokens=3,
                            completion_tokens=5, reasoning_tokens=2)  # fmt: skip
    events = _events([Reasoning(text="Think"), Reasoning(text="ing."), "Hello", " there", result])
    assert _shape(events) == [
        ("response.created", None), ("response.in_progress", None),
        ("response.output_item.added", 0), ("response.content_part.added", 0),
        ("response.reasoning_text.delta", 0), ("response.reasoning_text.delta", 0),
        ("response.reasoning_text.done", 0), ("response.content_part.done", 0),
        ("response.output_item.done", 0),
        ("response.output_item.added", 1), ("response.content_part.added", 1),
        ("response.output_text.delta", 1), ("response.output_text.delta", 1),
        ("response.output_text.done", 1), ("response.content_part.done", 1), ("response.output_item.done", 1),
        ("response.completed", None),
    ]  # fmt: skip
    assert [e["delta"] for e in events if e["type"] == "response.reasoning_text.delta"] == ["Think", "ing."]
    reasoning_id = events[2]["item"]["id"]
    assert events[2]["item"]["type"] == "reasoning" and events[3]["part"]["type"] == "reasoning_text"
    assert events[6]["text"] == "Thinking." and events[8]["item"]["content"][0]["text"] == "Thinking."
    output = events[-1]["response"]["output"]
    assert [item["type"] for item in output] == ["reasoning", "message"]
    assert output[0]["id"] == reasoning_id and output[1]["id"] == events[9]["item"]["id"]
    assert events[-1]["response"]["usage"]["output_tokens_details"]["reasoning_tokens"] == 2


def test_thinking_cut_by_the_token_limit_closes_at_the_end_and_calls_follow_it() -> None:
    cut = GenerateResult(text="", reasoning="Still", finish_reason="length", prompt_tokens=3,
                         completion_tokens=1)  # fmt: skip
    events = _events([Reasoning(text="Still"), cut])
    assert _shape(events)[4:] == [
        ("response.reasoning_text.delta", 0),
        ("response.reasoning_text.done", 0), ("response.content_part.done", 0),
        ("response.output_item.done", 0),
        # the empty message (no text and no call), then the end
        ("response.output_item.added", 1), ("response.content_part.added", 1),
        ("response.output_text.done", 1), ("response.content_part.done", 1),
        ("response.output_item.done", 1), ("response.incomplete", None),
    ]  # fmt: skip
    call = ToolCall(id="call_1", function=FunctionCall(name="f", arguments="{}"))
    called = GenerateResult(text="", reasoning="Call f.", finish_reason="tool_calls", prompt_tokens=3,
                            completion_tokens=4, tool_calls=[call])  # fmt: skip
    events = _events([Reasoning(text="Call f."), called])
    output = events[-1]["response"]["output"]
    assert [item["type"] for item in output] == ["reasoning", "function_call"]
    assert ("response.function_call_arguments.done", 1) in _shape(events)


def test_thinking_after_the_message_opened_comes_whole_after_it() -> None:
    late = GenerateResult(text="Hi", reasoning="Hm.", finish_reason="stop", prompt_tokens=3,
                          completion_tokens=3)  # fmt: skip
    events = _events(["Hi", Reasoning(text="Hm."), late])
    assert [item["type"] for item in events[-1]["response"]["output"]] == ["message", "reasoning"]
    assert ("response.reasoning_text.delta", 1) in _shape(events)
    assert ("response.output_text.delta", 0) in _shape(events)
