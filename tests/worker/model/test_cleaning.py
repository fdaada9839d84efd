"""Response cleaning: the seed's rules, stop strings, and streamed output equal to whole output."""

from __future__ import annotations

import itertools
import random

import pytest

from shared.model_types import MODEL_TYPES, ModelType, PromptFormat
from worker.model.cleaning import (
    SPECIAL_TOKENS,
    StopScanner,
    clean_response,
    role_echoes,
    scanner_for,
    stop_strings,
)

LLAMA, MISTRAL, TINYLLAMA = MODEL_TYPES["llama"], MODEL_TYPES["mistral"], MODEL_TYPES["tinyllama"]
GEMMA, GPT, OPT = MODEL_TYPES["gemma"], MODEL_TYPES["gpt"], MODEL_TYPES["opt"]


def streamed(scanner: StopScanner, chunks: list[str]) -> str:
    return "".join(scanner.feed(c) for c in chunks) + scanner.finish()


def chunks_at(text: str, cuts: list[int]) -> list[str]:
    return [text[a:b] for a, b in itertools.pairwise([0, *sorted(cuts), len(text)])]


def random_split(text: str, rng: random.Random) -> list[str]:
    return chunks_at(
        text, rng.sample(range(1, len(text)), rng.randint(0, len(text) - 1)) if len(text) > 1 else []
    )


# --- the seed's rules ---------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", [LLAMA, MISTRAL])
def test_inst_models_cut_at_a_new_inst_turn(model_type: ModelType) -> None:
    assert clean_response(" Four. [INST] And 3+3? [/INST] Six.", model_type) == "Four."
    assert clean_response("Four.</s>", model_type) == "Four."
    assert clean_response("[/INST] Four.", model_type) == "Four."


def test_tinyllama_cuts_at_user_or_system_turn() -> None:
    assert clean_response("Paris.\n<|user|>\nAnd Spain?", TINYLLAMA) == "Paris."
    assert clean_response("Paris.\n<|system|>\nx", TINYLLAMA) == "Paris."
    assert clean_response("<|assistant|>\nParis.</s>", TINYLLAMA) == "Paris."


def test_gemma_removes_model_echo_and_cuts_at_end_of_turn() -> None:
    assert clean_response("model\nHey there<end_of_turn>\n<start_of_turn>user", GEMMA) == "Hey there"
    assert clean_response("<start_of_turn>model\nHey<eos>", GEMMA) == "Hey"
    assert clean_response("model train", GEMMA) == "model train"


def test_plain_models_cut_at_a_new_user_line() -> None:
    assert clean_response("Assistant: Hi!\nUser: and you?", GPT) == "Hi!"
    assert clean_response(" Fine.<|endoftext|>The next doc", GPT) == "Fine."
    assert clean_response("A\nSystem: reset", OPT) == "A"


def test_special_tokens_that_are_not_stops_are_deleted() -> None:
    assert clean_response("<s>Hello</s> world<pad>", GPT) == "Hello world"
    assert clean_response("Hi<s> there", LLAMA) == "Hi there"


def test_surrounding_whitespace_is_stripped() -> None:
    assert clean_response("\n\n  Hello\n\n", GPT) == "Hello"
    assert clean_response("   ", GPT) == ""
    assert clean_response("", GPT) == ""


def test_request_stop_strings_cut_first_occurrence() -> None:
    assert clean_response("one, two, three", GPT, stop=["two", "one,"]) == ""
    assert clean_response("one, two, three", GPT, stop=["three", "two"]) == "one,"
    assert clean_response("one, two", GPT, stop=[""]) == "one, two"


def test_stop_wins_over_deleting_a_special_token() -> None:
    assert StopScanner(["</s>"]).feed("a</s>b") == "a"
    scanner = StopScanner(["<s>x"])
    assert streamed(scanner, ["a<s>x"]) == "a"
    assert scanner.stopped


def test_stop_strings_order_and_dedup() -> None:
    assert stop_strings(TINYLLAMA, ["END", "<|user|>"]) == [
        "END",
        "<|user|>",
        "<|system|>",
        "<|assistant|>",
        "</s>",
    ]
    assert stop_strings(GPT, None, chat=False) == ["<|endoftext|>"]
    assert stop_strings(GPT) == ["\nUser:", "\nSystem:", "<|endoftext|>"]


def test_a_base_models_chat_stops_at_any_speaker_it_invents() -> None:
    base = MODEL_TYPES["base"]
    stops = stop_strings(base)
    assert stops[:2] == ["\nUser:", "\nSystem:"]
    assert {"\nStudent:", "\nTeacher:", "\nAssistant:"} <= set(stops)  # the demo's Gemma 270M wrote these
    assert "\nStudent:" not in stop_strings(base, chat=False)  # a raw completion continues as it likes


def test_role_echoes_per_format() -> None:
    assert role_echoes(PromptFormat.PLAIN) == ("Assistant:", "<|assistant|>")
    assert role_echoes(PromptFormat.GEMMA)[-2:] == ("<start_of_turn>model\n", "model\n")
    assert "[/INST]" in role_echoes(PromptFormat.INST)


def test_raw_completion_scanner_keeps_whitespace_and_echoes() -> None:
    scanner = scanner_for(GPT, ["."], chat=False)
    assert streamed(scanner, [" Assistant: the sky", " is blue. More"]) == " Assistant: the sky is blue"
    assert scanner.stopped


# --- streaming ----------------------------------------------------------------------------------


def test_scanner_holds_back_a_possible_stop_and_releases_it_when_not() -> None:
    scanner = StopScanner(["<|user|>"])
    assert scanner.feed("Hi <|us") == "Hi"
    assert scanner.feed("ually") == " <|usually"
    assert not scanner.stopped
    assert scanner.finish() == ""


def test_scanner_cuts_exactly_at_a_stop_split_across_deltas() -> None:
    scanner = StopScanner(["<|user|>"])
    assert scanner.feed("Hi <|us") == "Hi"
    assert scanner.feed("er|> more") == ""
    assert scanner.stopped
    assert scanner.feed("ignored") == ""
    assert scanner.finish() == ""
    assert scanner.text == "Hi"


def test_scanner_emits_a_partial_stop_left_at_the_end() -> None:
    scanner = StopScanner(["<|user|>"])
    assert scanner.feed("Hi <|us") == "Hi"
    assert scanner.finish() == " <|us"


def test_scanner_holds_trailing_whitespace_until_text_follows() -> None:
    scanner = StopScanner([])
    assert scanner.feed("  one\n\n") == "one"
    assert scanner.feed("two ") == "\n\ntwo"
    assert scanner.finish() == ""


def test_scanner_waits_for_a_possible_role_echo() -> None:
    scanner = scanner_for(GPT)
    assert scanner.feed(" Assist") == ""
    assert scanner.feed("ant: Hi") == "Hi"
    other = scanner_for(GPT)
    assert other.feed("Assist") == ""
    assert other.feed("ance is") == "Assistance is"


def test_feed_after_finish_is_a_programming_error() -> None:
    scanner = StopScanner([])
    scanner.finish()
    with pytest.raises(RuntimeError):
        scanner.feed("x")


SAMPLES = [
    (TINYLLAMA, None, "<|assistant|>\n  Paris is the capital.\n\n<|user|>\nAnd Spain?"),
    (TINYLLAMA, None, "  <|assis"),
    (MISTRAL, ["Four"], " [/INST] It is Four. [INST] more"),
    (LLAMA, None, "Sure</s"),
    (GEMMA, None, "model\nHey <eos>there<end_of_turn>\n<start_of_turn>user"),
    (GEMMA, None, "mod"),
    (GPT, ["\n\n"], "Assistant: Hi!</s> How <s>are you\n\nUser: fine"),
    (GPT, ["STOP", "STOP NOW"], "go go STO STOP NOW"),
    (GPT, None, "ends with a newline\nUser"),
    (OPT, ["ab", "abc"], "xaxabxabc"),
]


@pytest.mark.parametrize(("model_type", "stop", "text"), SAMPLES)
def test_streaming_char_by_char_equals_whole(
    model_type: ModelType, stop: list[str] | None, text: str
) -> None:
    whole = clean_response(text, model_type, stop)
    assert streamed(scanner_for(model_type, stop), list(text)) == whole


@pytest.mark.parametrize(("model_type", "stop", "text"), SAMPLES)
def test_streaming_every_two_way_split_equals_whole(
    model_type: ModelType, stop: list[str] | None, text: str
) -> None:
    whole = clean_response(text, model_type, stop)
    for cut in range(len(text) + 1):
        assert streamed(scanner_for(model_type, stop), [text[:cut], text[cut:]]) == whole, cut


@pytest.mark.parametrize(("model_type", "stop", "text"), SAMPLES)
def test_streaming_random_chunkings_equal_whole(
    model_type: ModelType, stop: list[str] | None, text: str
) -> None:
    rng = random.Random(text)
    whole = clean_response(text, model_type, stop)
    for _ in range(200):
        assert streamed(scanner_for(model_type, stop), random_split(text, rng)) == whole


def test_whole_text_is_cut_exactly_as_the_rules_say() -> None:
    # The explicit rule: echo off T.lstrip(), cut at the first stop, delete tokens, strip.
    assert clean_response("  Assistant:  a <s>b\nUser: c", GPT) == "a b"


# --- property: any chunking of any text (hypothesis) ---------------------------------------------

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    HAVE_HYPOTHESIS = True
except ImportError:  # not a declared dev dependency yet: the fixed chunkings above still run
    HAVE_HYPOTHESIS = False

if not HAVE_HYPOTHESIS:

    @pytest.mark.skip(reason="hypothesis is not installed")
    def test_any_chunking_streams_the_same_as_whole() -> None:
        pass

else:
    # Fragments that make stops, partial stops, special tokens and echoes likely.
    _FRAGMENTS = [
        "<|user|>",
        "<|us",
        "</s>",
        "</",
        "<s>",
        "[INST]",
        "[IN",
        "Assistant:",
        "model\n",
        "\nUser:",
    ]
    _texts = st.lists(
        st.one_of(st.sampled_from(_FRAGMENTS), st.text(alphabet="ab <|>/\n:sINT", max_size=4)), max_size=12
    ).map("".join)
    _stops = st.lists(st.text(alphabet="ab <|>/\n", max_size=4), max_size=3)

    @given(
        text=_texts,
        stop=_stops,
        name=st.sampled_from(sorted(MODEL_TYPES)),
        chat=st.booleans(),
        data=st.data(),
    )
    @settings(max_examples=400, deadline=None)
    def test_any_chunking_streams_the_same_as_whole(
        text: str, stop: list[str], name: str, chat: bool, data: st.DataObject
    ) -> None:
        model_type = MODEL_TYPES[name]
        whole_scanner = scanner_for(model_type, stop, chat=chat)
        whole = streamed(whole_scanner, [text])
        cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=8))
        scanner = scanner_for(model_type, stop, chat=chat)
        assert streamed(scanner, chunks_at(text, cuts)) == whole
        assert scanner.stopped == whole_scanner.stopped
        assert scanner.text == whole
        if chat:
            assert whole == whole.strip()
            assert whole == clean_response(text, model_type, stop)
        if not any(token in text for token in SPECIAL_TOKENS):  # a deletion can join two halves
            assert not any(s in whole for s in stop_strings(model_type, stop, chat=chat))
