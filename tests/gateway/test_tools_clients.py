"""Agents and structured outputs as LangChain, LangGraph and instructor drive them, against the shared
`dukat serve` (tiny random-weight models: forced calls and schemas come out well-formed anyway)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

import instructor
import jsonschema
import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.prebuilt import create_react_agent
from pydantic import BaseModel

from tests.gateway.conftest import Dukat

CHAT = "tiny/tinyllama"
ASK = "What is the weather in Paris?"


@tool
def get_weather(city: str) -> str:
    """The weather now in a city."""
    return f"18 degrees and sunny in {city}"


class Forecast(BaseModel):
    city: str
    degrees: int
    sky: Literal["sunny", "cloudy", "rain"]


FORECAST_DICT = {
    "title": "Forecast",
    "description": "A forecast",
    "type": "object",
    "properties": {"city": {"type": "string"}, "degrees": {"type": "integer"}},
    "required": ["city", "degrees"],
}


def chat_model(dukat: Dukat, **kwargs: Any) -> ChatOpenAI:
    options = {
        "model": CHAT,
        "base_url": dukat.base_url,
        "api_key": "x",
        "max_retries": 0,
        "timeout": 120,
        "max_tokens": 64,
        "temperature": 1.0,
        "seed": 7,
    }
    return ChatOpenAI(**{**options, **kwargs})


def test_bind_tools_with_tool_choice_any_calls_the_tool(dukat: Dukat) -> None:
    model = chat_model(dukat).bind_tools([get_weather], tool_choice="any")
    message = model.invoke(ASK)
    assert isinstance(message, AIMessage) and message.tool_calls
    call = message.tool_calls[0]
    assert call["name"] == "get_weather" and isinstance(call["args"].get("city"), str)
    assert call["id"] and call["id"].startswith("call_")
    streamed = None
    for chunk in chat_model(dukat, temperature=0).bind_tools([get_weather], tool_choice="any").stream(ASK):
        streamed = chunk if streamed is None else streamed + chunk
    whole = chat_model(dukat, temperature=0).bind_tools([get_weather], tool_choice="any").invoke(ASK)
    assert streamed is not None and [c["args"] for c in streamed.tool_calls] == [
        c["args"] for c in whole.tool_calls
    ]


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_with_structured_output_gives_the_pydantic_object(dukat: Dukat, method: str) -> None:
    structured = chat_model(dukat).with_structured_output(Forecast, method=method)  # type: ignore[arg-type]
    assert isinstance(structured.invoke(ASK), Forecast)


def test_with_structured_output_json_mode_gives_an_object(dukat: Dukat) -> None:
    structured = chat_model(dukat).with_structured_output(FORECAST_DICT, method="json_mode")
    assert isinstance(structured.invoke(f"{ASK} Answer in JSON."), dict)


def test_a_react_agent_forced_to_a_tool_continues_after_its_result(dukat: Dukat) -> None:
    forced = chat_model(dukat).bind_tools([get_weather], tool_choice="any")
    free = chat_model(dukat, max_tokens=8).bind_tools([get_weather], tool_choice="none")

    def pick(state: dict[str, Any], runtime: Any) -> Any:
        # The first model call must call the tool; the one after the tool's result answers.
        return forced if isinstance(state["messages"][-1], HumanMessage) else free

    agent = create_react_agent(pick, [get_weather])
    messages = agent.invoke({"messages": [HumanMessage(ASK)]})["messages"]
    kinds = [type(m).__name__ for m in messages]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    assert messages[1].tool_calls[0]["name"] == "get_weather"
    assert isinstance(messages[2], ToolMessage) and "18 degrees" in messages[2].content
    assert isinstance(messages[3].content, str) and not messages[3].tool_calls


def test_chat_openai_on_the_responses_api(dukat: Dukat) -> None:
    model = chat_model(dukat, use_responses_api=True, max_tokens=8, temperature=0, seed=None)
    answer = model.invoke(ASK)
    assert isinstance(answer, AIMessage) and answer.text
    called = (
        chat_model(dukat, use_responses_api=True, seed=None)
        .bind_tools([get_weather], tool_choice="any")
        .invoke(ASK)
    )
    assert called.tool_calls and called.tool_calls[0]["name"] == "get_weather"


@pytest.fixture(scope="module")
def sdk(dukat: Dukat) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=dukat.base_url, api_key="x", max_retries=0, timeout=120) as c:
        yield c


# instructor's JSON mode (json_object plus the schema in a long system prompt) needs more context
# than the tiny models' 512 tokens; JSON_SCHEMA is its structured-output JSON mode.
@pytest.mark.parametrize("mode", [instructor.Mode.TOOLS, instructor.Mode.JSON_SCHEMA])
def test_instructor_modes_give_the_model(sdk: openai.OpenAI, mode: instructor.Mode) -> None:
    client = instructor.from_openai(sdk, mode=mode)
    out = client.chat.completions.create(
        model=CHAT,
        response_model=Forecast,
        messages=[{"role": "user", "content": ASK}],
        max_tokens=64,
        temperature=1.0,
        max_retries=1,
    )
    assert isinstance(out, Forecast)
    jsonschema.validate(json.loads(out.model_dump_json()), Forecast.model_json_schema())
