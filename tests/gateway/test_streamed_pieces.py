"""What a stream carries and when, as OpenAI's (and Anthropic's) clients expect it: each token's
logprobs in the chunk of its text, not all before the finish chunk; a tool call's arguments in
pieces while the model writes them (first its id, type and name), joining to the same call as the
whole response. Through the real SDKs and LangChain against the shared `dukat serve`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
from langchain_core.messages import AIMessageChunk
from langchain_openai import ChatOpenAI

from tests.gateway.conftest import Dukat
from tests.support.openapi_check import validate

CHAT = "tiny/tinyllama"
ASK: Any = [{"role": "user", "content": "Write a note."}]
# A string long enough that its arguments take many tokens, whatever the random model picks.
NOTE = {
    "type": "object",
    "properties": {"note": {"type": "string", "minLength": 24, "maxLength": 40}},
    "required": ["note"],
    "additionalProperties": False,
}
TOOLS: Any = [{"type": "function", "function": {"name": "take_note", "parameters": NOTE}}]
NAMED: Any = {"type": "function", "function": {"name": "take_note"}}


@pytest.fixture(scope="module")
def client(dukat: Dukat) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=dukat.base_url, api_key="x", max_retries=0, timeout=120) as c:
        yield c


def test_chat_stream_sends_each_tokens_logprobs_in_the_chunk_of_its_text(client: openai.OpenAI) -> None:
    kwargs: Any = {"model": CHAT, "messages": ASK, "max_tokens": 12, "temperature": 0}
    kwargs.update(logprobs=True, top_logprobs=2, stream_options={"include_usage": True})
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    texts = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) > 1
    for chunk in texts:  # every piece of text comes with the logprobs of the tokens that made it
        validate(chunk.model_dump(mode="json", exclude_unset=True), "CreateChatCompletionStreamResponse")
        assert chunk.choices[0].logprobs and chunk.choices[0].logprobs.content
    streamed = [
        t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content or []
    ]
    whole = client.chat.completions.create(**{k: v for k, v in kwargs.items() if k != "stream_options"})
    content = whole.choices[0].logprobs.content or []  # type: ignore[union-attr]
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content]
    assert b"".join(bytes(t.bytes or []) for t in streamed).decode() == whole.choices[0].message.content
    assert chunks[-1].usage and len(streamed) == chunks[-1].usage.completion_tokens


def test_completion_stream_sends_logprobs_and_offsets_with_each_piece(client: openai.OpenAI) -> None:
    kwargs: Any = {"model": CHAT, "prompt": "The cat", "max_tokens": 10, "temperature": 0, "logprobs": 2}
    whole = client.completions.create(**kwargs).choices[0].logprobs
    chunks = list(client.completions.create(**kwargs, stream=True))
    texts = [c.choices[0] for c in chunks if c.choices and c.choices[0].text]
    assert len(texts) > 1 and all(t.logprobs and t.logprobs.tokens for t in texts)
    parts = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    assert whole is not None
    assert [t for p in parts for t in p.tokens or []] == whole.tokens
    assert [t for p in parts for t in p.token_logprobs or []] == whole.token_logprobs
    assert [t for p in parts for t in p.text_offset or []] == whole.text_offset
    assert [t for p in parts for t in p.top_logprobs or []] == whole.top_logprobs


def test_long_answers_logprobs_cross_the_worker_wire_in_slices_and_join_whole(client: openai.OpenAI) -> None:
    """Past 64 tokens the worker sends a result's logprobs in slices (shared/wire.py's Logprobs)."""
    kwargs: Any = {"model": CHAT, "messages": ASK, "max_tokens": 150, "temperature": 0, "logprobs": True}
    kwargs.update(top_logprobs=2, extra_body={"min_tokens": 150})
    whole = client.chat.completions.create(**kwargs)
    streamed = [
        t
        for c in client.chat.completions.create(**kwargs, stream=True)
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content or []
    ]
    content = whole.choices[0].logprobs.content or []  # type: ignore[union-attr]
    assert len(content) == 150
    assert [(t.token, t.logprob, t.top_logprobs) for t in content] == [
        (t.token, t.logprob, t.top_logprobs) for t in streamed
    ]
    echo: Any = {"model": CHAT, "prompt": "The cat sat " * 40, "max_tokens": 70, "temperature": 0}
    echoed = client.completions.create(**echo, echo=True, logprobs=1, extra_body={"min_tokens": 70})
    logprobs, usage = echoed.choices[0].logprobs, echoed.usage
    assert logprobs is not None and usage is not None and usage.prompt_tokens > 64
    assert len(logprobs.tokens or []) == usage.prompt_tokens + usage.completion_tokens
    assert (logprobs.token_logprobs or [])[0] is None  # the prompt's first token, then every other one's
    assert None not in (logprobs.token_logprobs or [])[1:]


def test_responses_text_deltas_carry_their_tokens_logprobs(client: openai.OpenAI) -> None:
    kwargs: Any = {"model": CHAT, "input": "Say hi", "max_output_tokens": 10, "temperature": 0}
    kwargs.update(top_logprobs=2, include=["message.output_text.logprobs"])
    events = list(client.responses.create(**kwargs, stream=True))
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1 and all(d.logprobs for d in deltas)  # type: ignore[union-attr]
    for delta in deltas:
        validate(delta.model_dump(mode="json", exclude_unset=True), "ResponseStreamEvent")
    done = next(e for e in events if e.type == "response.output_text.done")
    streamed = [(p.token, p.logprob) for d in deltas for p in d.logprobs]  # type: ignore[union-attr]
    assert streamed == [(p.token, p.logprob) for p in done.logprobs]  # type: ignore[union-attr]


def chat_call_pieces(client: openai.OpenAI, **kwargs: Any) -> tuple[list[Any], Any]:
    """A streamed forced call's tool-call deltas, and the same request's whole call."""
    kwargs = {"model": CHAT, "messages": ASK, "tools": TOOLS, "max_tokens": 80, **kwargs}
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    for chunk in chunks:
        validate(chunk.model_dump(mode="json", exclude_unset=True), "CreateChatCompletionStreamResponse")
    pieces = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    (whole,) = client.chat.completions.create(**kwargs).choices[0].message.tool_calls or []
    return pieces, whole


@pytest.mark.parametrize("choice", ["named", "required"])
@pytest.mark.parametrize("seed", [1, 2])
def test_a_tool_calls_arguments_stream_as_generated_and_join_to_the_whole_call(
    client: openai.OpenAI, choice: str, seed: int
) -> None:
    tool_choice = NAMED if choice == "named" else "required"
    pieces, whole = chat_call_pieces(client, tool_choice=tool_choice, temperature=1.0, seed=seed)
    first, *rest = pieces
    assert first.id.startswith("call_") and first.type == "function" and first.function.name == "take_note"
    assert not first.function.arguments  # OpenAI's first piece: the name, no arguments yet
    assert all(p.index == 0 and p.id is None and p.function.name is None for p in rest)
    assert len([p for p in rest if p.function.arguments]) > 3  # many pieces, not the call at once
    arguments = "".join(p.function.arguments or "" for p in rest)
    assert arguments == whole.function.arguments
    assert len(json.loads(arguments)["note"]) >= 24


def test_langchain_tool_call_chunks_merge_to_the_invoked_call(dukat: Dukat) -> None:
    llm = ChatOpenAI(
        model=CHAT, base_url=dukat.base_url, api_key="x", max_retries=0, timeout=120, max_tokens=80, seed=3
    ).bind_tools(TOOLS, tool_choice="take_note")
    chunks = list(llm.stream("Write a note."))
    pieces = [c for c in chunks if isinstance(c, AIMessageChunk) and c.tool_call_chunks]
    assert len(pieces) > 3
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    whole = llm.invoke("Write a note.")
    assert isinstance(merged, AIMessageChunk)
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [
        (c["name"], c["args"])
        for c in whole.tool_calls  # type: ignore[attr-defined]
    ]


def test_responses_function_call_arguments_stream_in_deltas(client: openai.OpenAI) -> None:
    tools: Any = [{"type": "function", "name": "take_note", "parameters": NOTE, "strict": False}]
    kwargs: Any = {"model": CHAT, "input": "Write a note.", "tools": tools, "max_output_tokens": 80}
    kwargs.update(tool_choice={"type": "function", "name": "take_note"}, temperature=0)
    events = list(client.responses.create(**kwargs, stream=True))
    for event in events:
        validate(event.model_dump(mode="json", exclude_unset=True), "ResponseStreamEvent")
    added = next(e for e in events if e.type == "response.output_item.added")
    deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert len(deltas) > 3 and events.index(deltas[0]) > events.index(added)
    assert {d.item_id for d in deltas} == {added.item.id, done.item_id}  # type: ignore[union-attr]
    assert "".join(d.delta for d in deltas) == done.arguments  # type: ignore[union-attr]
    (call,) = [i for i in events[-1].response.output if i.type == "function_call"]  # type: ignore[union-attr]
    assert call.id == added.item.id and call.arguments == done.arguments  # type: ignore[union-attr]
    assert call.arguments == client.responses.create(**kwargs).output[0].arguments  # type: ignore[union-attr]


def test_anthropic_tool_use_input_streams_in_json_deltas(dukat: Dukat) -> None:
    tool: Any = {"name": "take_note", "input_schema": NOTE}
    kwargs: Any = {
        "model": CHAT,
        "max_tokens": 80,
        "messages": [{"role": "user", "content": "Write a note."}],
    }
    kwargs.update(tools=[tool], tool_choice={"type": "tool", "name": "take_note"})
    with (
        anthropic.Anthropic(base_url=dukat.url, api_key="x", max_retries=0, timeout=120) as c,
        c.messages.stream(**kwargs) as stream,
    ):
        events = list(stream)
        final = stream.get_final_message()
    partial = [
        e.delta.partial_json
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]  # type: ignore[union-attr]
    assert len(partial) > 3
    (use,) = [b for b in final.content if b.type == "tool_use"]
    assert json.loads("".join(partial)) == use.input and len(use.input["note"]) >= 24  # type: ignore[index]
