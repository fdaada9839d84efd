"""`POST /v1/messages` and `/v1/messages/count_tokens` through the official `anthropic` SDK: whole,
async, streamed (Anthropic's event sequence and the SDK's stream helpers), tools and a tool-use round
trip, token counts, and errors in Anthropic's shape."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest

from tests.gateway.conftest import Dukat

CHAT = "tiny/tinyllama"
PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOL: Any = {"name": "get_weather", "description": "The weather in a city", "input_schema": PARAMS}
HELLO: Any = [{"role": "user", "content": "Say hi"}]
# The SDK (2.x) dropped the sampling fields Anthropic's newest models ignore; the API still has them.
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def client(dukat: Dukat) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=dukat.url, api_key="x", max_retries=0, timeout=120) as c:
        yield c


def test_a_message_has_anthropics_shape(client: anthropic.Anthropic) -> None:
    out = client.messages.create(
        model=CHAT,
        max_tokens=6,
        messages=HELLO,
        system="Be brief.",
        metadata={"user_id": "u1"},
        extra_body={"temperature": 0, "top_k": 1},
    )
    assert out.id.startswith("msg_") and out.type == "message" and out.role == "assistant"
    assert out.model == CHAT and out.content[0].type == "text" and out.content[0].text
    assert out.stop_reason in ("end_turn", "max_tokens") and out.usage.output_tokens <= 6
    assert out.usage.input_tokens > 0


def test_the_async_client_gets_the_same_greedy_text(client: anthropic.Anthropic, dukat: Dukat) -> None:
    kwargs: dict[str, Any] = {"model": CHAT, "max_tokens": 6, "messages": HELLO, "extra_body": GREEDY}
    whole = client.messages.create(**kwargs)

    async def run() -> anthropic.types.Message:
        async with anthropic.AsyncAnthropic(base_url=dukat.url, api_key="x", max_retries=0, timeout=120) as c:
            return await c.messages.create(**kwargs)

    out = asyncio.run(run())
    assert out.content == whole.content and out.usage == whole.usage


def test_a_stream_follows_anthropics_event_sequence(client: anthropic.Anthropic) -> None:
    kwargs: dict[str, Any] = {"model": CHAT, "max_tokens": 6, "messages": HELLO, "extra_body": GREEDY}
    whole = client.messages.create(**kwargs)
    events = list(client.messages.create(**kwargs, stream=True))
    types = [e.type for e in events]
    deltas = types.count("content_block_delta")
    assert types == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]  # the SDK skips `ping` itself
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")  # type: ignore[union-attr]
    assert text == whole.content[0].text  # type: ignore[union-attr]
    last = events[-2]
    assert last.type == "message_delta" and last.delta.stop_reason == whole.stop_reason
    assert last.usage.output_tokens == whole.usage.output_tokens


def test_the_stream_helper_gives_text_and_the_final_message(client: anthropic.Anthropic) -> None:
    kwargs: dict[str, Any] = {"model": CHAT, "max_tokens": 6, "messages": HELLO, "extra_body": GREEDY}
    whole = client.messages.create(**kwargs)
    with client.messages.stream(**kwargs) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == whole.content[0].text == final.content[0].text  # type: ignore[union-attr]
    assert final.usage.input_tokens == whole.usage.input_tokens
    assert final.stop_reason == whole.stop_reason


def test_the_raw_stream_has_a_ping_and_no_done(dukat: Dukat) -> None:
    body = {"model": CHAT, "max_tokens": 4, "messages": HELLO, "stream": True}
    with httpx.stream("POST", f"{dukat.url}/v1/messages", json=body, timeout=120) as response:
        text = response.read().decode()
    assert response.status_code == 200 and "event: ping\n" in text and "[DONE]" not in text
    assert text.rstrip().endswith('data: {"type":"message_stop"}')


def test_a_forced_tool_use_round_trip(client: anthropic.Anthropic) -> None:
    question: Any = {"role": "user", "content": "Weather in Paris?"}
    first = client.messages.create(
        model=CHAT, max_tokens=48, messages=[question], tools=[TOOL], tool_choice={"type": "any"}
    )
    uses = [b for b in first.content if b.type == "tool_use"]
    assert first.stop_reason == "tool_use" and uses and uses[0].name == "get_weather"
    jsonschema.validate(uses[0].input, PARAMS)
    result: Any = {"type": "tool_result", "tool_use_id": uses[0].id, "content": "18 C and sunny"}
    history: Any = [
        question,
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [result]},
    ]
    second = client.messages.create(model=CHAT, max_tokens=4, messages=history, tools=[TOOL])
    assert second.content and second.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert second.usage.input_tokens > first.usage.input_tokens  # the call and its result were read


def test_a_named_tool_streams_its_input_as_json_deltas(client: anthropic.Anthropic) -> None:
    kwargs: dict[str, Any] = {
        "model": CHAT,
        "max_tokens": 48,
        "messages": [{"role": "user", "content": "Weather?"}],
        "tools": [TOOL],
        "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
    }
    with client.messages.stream(**kwargs) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert any(e.type == "content_block_delta" and e.delta.type == "input_json_delta" for e in events)  # type: ignore[union-attr]
    use = final.content[-1]
    assert use.type == "tool_use" and use.name == "get_weather" and final.stop_reason == "tool_use"
    jsonschema.validate(use.input, PARAMS)


def test_count_tokens_is_what_the_message_reads(client: anthropic.Anthropic) -> None:
    counted = client.messages.count_tokens(model=CHAT, messages=HELLO, system="Be brief.")
    out = client.messages.create(model=CHAT, max_tokens=2, messages=HELLO, system="Be brief.")
    assert counted.input_tokens == out.usage.input_tokens > 0
    with_tools = client.messages.count_tokens(model=CHAT, messages=HELLO, system="Be brief.", tools=[TOOL])
    assert with_tools.input_tokens > counted.input_tokens


def test_errors_come_in_anthropics_shape(client: anthropic.Anthropic, dukat: Dukat) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="tiny/nobody", max_tokens=2, messages=HELLO)
    assert missing.value.body["type"] == "error"  # type: ignore[index]
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model=CHAT, max_tokens=2, messages=HELLO, extra_body={"temperature": 1.5})
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "temperature" in bad.value.message
    image: Any = {"type": "image", "source": {"type": "url", "url": "http://example.com/a.png"}}
    with pytest.raises(anthropic.BadRequestError) as unsupported:
        client.messages.create(model=CHAT, max_tokens=2, messages=[{"role": "user", "content": [image]}])
    assert "image" in unsupported.value.message
    no_max = httpx.post(f"{dukat.url}/v1/messages", json={"model": CHAT, "messages": HELLO}, timeout=30)
    assert no_max.status_code == 400 and no_max.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in no_max.json()["error"]["message"]
