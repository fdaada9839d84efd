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


OPENAI_RESPONSE_FIELDS = (
    "presence_penalty", "frequency_penalty", "top_logprobs", "background", "service_tier", "reasoning",
    "max_tool_calls", "safety_identifier", "prompt_cache_key", "temperature", "top_p", "usage",
)


def test_a_response_has_every_field_openai_returns_with_the_numbers_used(dukat: Dukat) -> None:
    body = {"model": CHAT, "input": "Say hi", "max_output_tokens": 4, "presence_penalty": 0.5,
            "safety_identifier": "u1", "prompt_cache_key": "k", "max_tool_calls": 3}
    with httpx.Client(base_url=dukat.base_url, timeout=120) as http:
        out = http.post("/responses", json=body).json()
        events = [json.loads(line[6:]) for line in http.post("/responses", json={**body, "stream": True}).text
                  .splitlines() if line.startswith("data: ") and line != "data: [DONE]"]
    validate(out, "Response")
    assert all(field in out for field in OPENAI_RESPONSE_FIELDS), set(OPENAI_RESPONSE_FIELDS) - set(out)
    # The tiny models' config says temperature 0.7 (tests/gateway/conftest.py); the engine's top_p 1.0.
    assert out["temperature"] == 0.7 and out["top_p"] == 1.0 and out["presence_penalty"] == 0.5
    assert (out["safety_identifier"], out["prompt_cache_key"], out["max_tool_calls"]) == ("u1", "k", 3)
    assert out["background"] is False and out["service_tier"] == "default"
    for event in events[:2]:
        validate(event, "ResponseStreamEvent")
        assert event["type"] in ("response.created", "response.in_progress")
        assert event["response"]["usage"]["total_tokens"] == 0
        assert all(field in event["response"] for field in OPENAI_RESPONSE_FIELDS)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_included_output_text_logprobs_are_served(client: openai.OpenAI, stream: bool) -> None:
    kwargs: Any = {"model": CHAT, "input": "Say hi", "max_output_tokens": 5, "temperature": 0}
    kwargs.update(top_logprobs=2, include=["message.output_text.logprobs"])
    if stream:
        events = list(client.responses.create(**kwargs, stream=True))
        done = next(e for e in events if e.type == "response.output_text.done")
        logprobs, text = done.logprobs, done.text  # type: ignore[union-attr]
        out = events[-1].response  # type: ignore[union-attr]
    else:
        out = client.responses.create(**kwargs)
        part = out.output[0].content[0]  # type: ignore[union-attr]
        logprobs, text = part.logprobs, part.text  # type: ignore[union-attr]
    validate(out.model_dump(mode="json", exclude_unset=True), "Response")
    assert logprobs and "".join(p.token for p in logprobs) == text
    for entry in logprobs:
        assert len(entry.top_logprobs) == 2 and entry.top_logprobs[0].token == entry.token  # greedy
    assert out.usage is not None and len(logprobs) == out.usage.output_tokens
    plain = client.responses.create(**{k: v for k, v in kwargs.items() if k != "include"})
    assert plain.output[0].content[0].logprobs == []  # type: ignore[union-attr]


def test_a_background_response_is_a_400_as_nothing_is_stored(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=CHAT, input="hi", background=True, max_output_tokens=2)
    assert caught.value.param == "background"


PENALTY_PROMPTS = ("hello hello hello", "a b a b a b", "The weather today is", "1 2 3 4 5", "Once upon")


def greedy_logprobs(client: openai.OpenAI, prompt: str, **extra: Any) -> list[Any]:
    out = client.responses.create(
        model=CHAT, input=prompt, max_output_tokens=64, temperature=0, top_logprobs=5,
        include=["message.output_text.logprobs"], extra_body=extra,
    )
    return out.output[0].content[0].logprobs or []  # type: ignore[union-attr]


@pytest.mark.parametrize("field", ["presence_penalty", "frequency_penalty"])
def test_responses_penalties_change_a_repeat_they_must_change(client: openai.OpenAI, field: str) -> None:
    """At the first repeated token whose lead over the best new token is under 2, a penalty of 2
    must change the greedy output (there or before)."""
    checked = 0
    for prompt in PENALTY_PROMPTS:
        plain = greedy_logprobs(client, prompt)
        tokens = [e.token for e in plain]
        for i, entry in enumerate(plain):
            if entry.token not in tokens[:i] or "\ufffd" in entry.token:
                continue
            others = [t.logprob for t in entry.top_logprobs if t.token not in tokens[: i + 1]]
            if others and entry.logprob - max(others) < 2.0:
                penalised = [e.token for e in greedy_logprobs(client, prompt, **{field: 2.0})]
                assert penalised[: i + 1] != tokens[: i + 1], prompt
                checked += 1
                break
    assert checked, "no prompt repeats a token the penalty must change"
