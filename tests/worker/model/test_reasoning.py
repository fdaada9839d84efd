"""Thinking blocks split from the answer: the same for any split of the text, an open block from the
prompt, a block cut short, detection from the template; and through the engine on the tiny
DeepSeek-R1 distill and Qwen 3 (whose templates open / can close the block)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.generation import GenerateRequest, GenerateResult, Message, Reasoning, SamplingParams
from tests.conftest import TINY_MODEL_CACHE
from tests.support.tiny_modern_models import ensure_modern_model
from worker.host.catalog import model_type_of
from worker.model.engine import Engine
from worker.model.harmony import HarmonySplitter, speaks_harmony
from worker.model.reasoning import ThinkSplitter, opens_thinking, thinks


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
