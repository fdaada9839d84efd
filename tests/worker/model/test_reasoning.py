"""Thinking blocks split from the answer: the same for any split of the text, an open block from the
prompt, a block cut short, detection from the template; and through the engine on the tiny
DeepSeek-R1 distill and Qwen 3 (whose templates open / can close the block)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from shared.generation import (
    FunctionCall,
    GenerateRequest,
    GenerateResult,
    Message,
    Reasoning,
    SamplingParams,
    ToolCall,
    ToolUse,
)
from tests.conftest import TINY_MODEL_CACHE
from tests.support.tiny_modern_models import ensure_modern_model
from worker.host.catalog import model_type_of
from worker.model.batching import Job
from worker.model.engine import Engine
from worker.model.harmony import HarmonySplitter, speaks_harmony
from worker.model.reasoning import ThinkSplitter, opens_thinking, thinks
from worker.model.reply import Plan, Reply
from worker.model.sampling import TokenSampler
from worker.model.tool_calls import ToolFormat, tool_format_of


def _split(text: str, pieces: list[int], *, inside: bool = False) -> tuple[str | None, str, str, str]:
    splitter = ThinkSplitter(inside=inside)
    thought, answer, at = [], [], 0
    for size in [*pieces, len(text)]:
        t, a = splitter.feed(text[at : at + size])
        thought.append(t)
        answer.append(a)
        at += size
    t, a = splitter.finish()
    return splitter.reasoning, splitter.content, "".join([*thought, t]), "".join([*answer, a])


@pytest.mark.parametrize("pieces", [[], [1] * 40, [3, 5, 2, 7], [8, 1, 1, 1, 20]])
def test_a_block_at_the_start_is_reasoning_for_any_split(pieces: list[int]) -> None:
    reasoning, content, streamed_thought, streamed_answer = _split(
        "<think>\nThe user greets me.\n</think>\n\nHello there!", pieces
    )
    assert (reasoning, content) == ("The user greets me.\n", "Hello there!")
    assert (streamed_thought, streamed_answer) == (reasoning, content)


def test_a_reply_without_a_block_is_all_answer_and_a_later_tag_is_text() -> None:
    assert _split("Hello <think> is a tag", [2, 3])[:2] == (None, "Hello <think> is a tag")
    assert _split("<thin", [])[:2] == (None, "<thin")  # an opener never completed is answer


def test_a_prompt_that_opens_the_block_starts_the_reply_in_it() -> None:
    assert opens_thinking("<｜User｜>Hi<｜Assistant｜><think>\n")
    assert not opens_thinking("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # enable_thinking false
    assert _split("Let me see.</think>Paris.", [4, 4], inside=True)[:2] == ("Let me see.", "Paris.")


def test_a_block_cut_short_is_all_reasoning() -> None:
    assert _split("<think>Still thinking about </th", [9])[:2] == ("Still thinking about </th", "")


def test_detected_from_the_template() -> None:
    assert thinks("{{ '<|im_start|>assistant\\n<think>' }}")
    assert not thinks("{{ '<|im_start|>assistant\\n' }}") and not thinks(None)


def _engine(hub_id: str) -> Engine:
    path: Path = ensure_modern_model(hub_id, TINY_MODEL_CACHE)
    return Engine.load(path, model_type=model_type_of(hub_id, path), quantization="none", device="cpu")


def test_an_r1_distill_reply_cut_by_max_tokens_is_reasoning_with_finish_length() -> None:
    engine = _engine("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B")
    try:
        req = GenerateRequest(messages=[Message(role="user", content="Hi")],
                              params=SamplingParams(max_new_tokens=10, temperature=0))  # fmt: skip
        whole = engine.generate(req)
        items = list(engine.stream(req))
    finally:
        engine.close()
    assert whole.finish_reason == "length" and whole.text == ""
    assert whole.reasoning and whole.reasoning_tokens == whole.completion_tokens == 10
    streamed = "".join(i.text for i in items if isinstance(i, Reasoning))
    assert streamed == whole.reasoning
    assert not [i for i in items if isinstance(i, str)]  # nothing leaked into the answer
    assert isinstance(items[-1], GenerateResult) and items[-1].reasoning == whole.reasoning


def test_chat_template_kwargs_reach_the_template() -> None:
    engine = _engine("Qwen/Qwen3-0.6B")
    try:
        base = GenerateRequest(messages=[Message(role="user", content="Hi")],
                               params=SamplingParams(max_new_tokens=6, temperature=0))  # fmt: skip
        off = GenerateRequest(**{**_fields(base), "template_kwargs": {"enable_thinking": False}})
        thinking_off, default = engine.generate(off), engine.generate(base)
    finally:
        engine.close()
    # The closed empty block changes the prompt, so the (random) model continues differently.
    assert thinking_off.prompt_tokens > default.prompt_tokens
    assert thinking_off.reasoning is None and thinking_off.text


def _fields(req: GenerateRequest) -> dict[str, object]:
    return {f: getattr(req, f) for f in req.__struct_fields__}


HARMONY = (
    "<|channel|>analysis<|message|>The user says hi.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>Hello!"
)


def _harmony(text: str, pieces: list[int]) -> tuple[str | None, str, str, str]:
    splitter = HarmonySplitter()
    thought, answer, at = [], [], 0
    for size in [*pieces, len(text)]:
        t, a = splitter.feed(text[at : at + size])
        thought.append(t)
        answer.append(a)
        at += size
    t, a = splitter.finish()
    return splitter.reasoning, splitter.content, "".join([*thought, t]), "".join([*answer, a])


@pytest.mark.parametrize("pieces", [[], [1] * 120, [5, 9, 2, 30, 3]])
def test_harmony_analysis_is_reasoning_and_final_the_answer_for_any_split(pieces: list[int]) -> None:
    reasoning, content, thought, answer = _harmony(HARMONY, pieces)
    assert (reasoning, content) == ("The user says hi.", "Hello!")
    assert (thought, answer) == (reasoning, content)


def test_a_harmony_reply_without_channels_is_answer_and_a_cut_analysis_is_reasoning() -> None:
    assert _harmony("just text, no markers", [4])[:2] == (None, "just text, no markers")
    assert _harmony("<|channel|>analysis<|message|>thinking ab", [7])[:2] == ("thinking ab", "")
    assert speaks_harmony("{{ '<|start|>assistant' }}{{ '<|channel|>final' }}") and not speaks_harmony(None)


def test_a_gpt_oss_reply_is_decoded_with_its_channel_markers_and_split() -> None:
    engine = _engine("openai/gpt-oss-20b")
    try:
        req = GenerateRequest(messages=[Message(role="user", content="Hi")],
                              params=SamplingParams(max_new_tokens=8, temperature=0))  # fmt: skip
        result = engine.generate(req)
    finally:
        engine.close()
    # A random model names no channel: its text is all answer, with no marker left in it.
    assert result.reasoning is None and "<|" not in result.text


HARMONY_CALL = (
    "<|channel|>analysis<|message|>Need the weather.<|end|>"
    "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
    '<|message|>{"city": "Paris"}<|call|>'
)


@pytest.mark.parametrize("pieces", [[], [1] * 200, [7, 3, 40, 2, 11]])
def test_a_harmony_commentary_message_to_a_function_is_a_tool_call_for_any_split(pieces: list[int]) -> None:
    splitter = HarmonySplitter(calls=True)
    at = 0
    for size in [*pieces, len(HARMONY_CALL)]:
        splitter.feed(HARMONY_CALL[at : at + size])
        at += size
    splitter.finish()
    assert (splitter.reasoning, splitter.content) == ("Need the weather.", "")
    calls = [(c.function.name, c.function.arguments) for c in splitter.calls]
    assert calls == [("get_weather", '{"city": "Paris"}')]


def test_harmony_calls_with_the_recipient_first_cut_short_or_not_json() -> None:
    def split(text: str, *, calls: bool = True) -> tuple[str, list[tuple[str, object]]]:
        splitter = HarmonySplitter(calls=calls)
        splitter.feed(text)
        splitter.finish()
        return splitter.content, [(c.function.name, c.function.arguments) for c in splitter.calls]

    first = '<|start|>assistant to=functions.g<|channel|>commentary json<|message|>{"zone": "UTC"}<|call|>'
    assert split(first) == ("", [("g", '{"zone": "UTC"}')])
    cut = '<|channel|>commentary to=functions.f<|message|>{"a": 1}'
    assert split(cut) == ("", [("f", '{"a": 1}')])
    assert split("<|channel|>commentary to=functions.f<|message|>not json<|call|>") == ("not json", [])
    # A request without tools: the message is answer text, as before.
    assert split('<|channel|>commentary to=functions.f<|message|>{"a": 1}<|call|>', calls=False) == (
        '{"a": 1}', []
    )


def test_a_gpt_oss_reply_with_a_commentary_call_ends_with_tool_calls() -> None:
    """The reply as the engine reads it: the tiny gpt-oss's tokens of a harmony call, decoded with
    their markers kept, split, and the call in the result."""
    path: Path = ensure_modern_model("openai/gpt-oss-20b", TINY_MODEL_CACHE)
    model_type = model_type_of("openai/gpt-oss-20b", path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tool_format_of(tokenizer.chat_template) is ToolFormat.HARMONY
    tokens = tokenizer(HARMONY_CALL, add_special_tokens=False).input_ids
    plan = Plan(prompt_ids=[0], params=SamplingParams(stop=[]), max_new_tokens=len(tokens) + 1, chat=True,
                stop_ids=frozenset(), tool_format=ToolFormat.HARMONY, tool_parsing="auto", skip_special=False,
                harmony=True)  # fmt: skip
    reply = Reply(model_type, tokenizer, plan, time.perf_counter())
    reply.job = Job(prompt_ids=[0], sampler=TokenSampler(SamplingParams(), device=torch.device("cpu")),
                    max_new_tokens=plan.max_new_tokens, stop_ids=frozenset(),
                    on_item=lambda item: None)  # fmt: skip
    texts: list[object] = []
    for token in tokens:
        reply.emit(reply.feed(token), texts.append)
    results: list[GenerateResult | BaseException] = []
    reply.conclude(texts.append, results.append)
    (result,) = results
    assert isinstance(result, GenerateResult) and result.finish_reason == "tool_calls"
    assert [(c.function.name, c.function.arguments) for c in result.tool_calls or []] == [
        ("get_weather", '{"city": "Paris"}')
    ]
    assert result.reasoning == "Need the weather." and result.text == ""
    assert "".join(t.text for t in texts if isinstance(t, Reasoning)) == "Need the weather."


def test_gpt_oss_gets_its_tools_and_calls_through_its_own_template() -> None:
    engine = _engine("openai/gpt-oss-20b")
    try:
        tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
        history = [
            Message(role="user", content="Weather in Paris?"),
            Message(role="assistant", tool_calls=[ToolCall(id="call_1", function=FunctionCall(
                name="get_weather", arguments='{"city": "Paris"}'))]),
            Message(role="tool", tool_call_id="call_1", content="18 C"),
        ]  # fmt: skip
        req = GenerateRequest(messages=history, tools=ToolUse(tools=tools))
        prompt = engine.detokenize(engine.tokenize(req, generation_prompt=True, special_tokens=None))
    finally:
        engine.close()
    assert "namespace functions {" in prompt and "type get_weather" in prompt
    call = '<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}'
    assert call in prompt
    assert '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>"18 C"' in prompt
