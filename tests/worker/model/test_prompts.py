"""Prompt formats pinned to exact strings: the seed's single turn, multi-turn, folding and bad input."""

from __future__ import annotations

import msgspec
import pytest

from shared.errors import InvalidRequestError
from shared.generation import Message, TextPart
from shared.model_types import PromptFormat
from worker.model.prompts import (
    Turn,
    folds_system,
    implied_stops,
    normalize_messages,
    render_fallback,
    seed_prompt,
    template_messages,
)


def msg(role: str, content: object) -> Message:
    # Decoded like a request body, so content parts become TextPart structs.
    return msgspec.convert({"role": role, "content": content}, Message)


CONVERSATION = [
    msg("system", "Be brief."),
    msg("user", "Hi"),
    msg("assistant", "Hello!"),
    msg("user", "Name a colour."),
]


# --- the seed's single-turn prompts -------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        (PromptFormat.INST, "<s>[INST] Be brief.\n\nWhat is 2+2? [/INST]"),
        (PromptFormat.ZEPHYR, "<|system|>\nBe brief.\n<|user|>\nWhat is 2+2?\n<|assistant|>"),
        (
            PromptFormat.GEMMA,
            "<start_of_turn>user\nBe brief.\n\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
        ),
        (PromptFormat.PLAIN, "System: Be brief.\nUser: What is 2+2?\nAssistant:"),
    ],
)
def test_seed_prompt_with_system_prompt(fmt: PromptFormat, expected: str) -> None:
    assert seed_prompt("What is 2+2?", "Be brief.", fmt) == expected


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        (PromptFormat.INST, "<s>[INST] What is 2+2? [/INST]"),
        (PromptFormat.ZEPHYR, "<|user|>\nWhat is 2+2?\n<|assistant|>"),
        (PromptFormat.GEMMA, "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n"),
        (PromptFormat.PLAIN, "What is 2+2?"),
    ],
)
def test_seed_prompt_without_system_prompt(fmt: PromptFormat, expected: str) -> None:
    assert seed_prompt("What is 2+2?", None, fmt) == expected
    assert seed_prompt("What is 2+2?", "", fmt) == expected


# --- multi-turn ---------------------------------------------------------------------------------


def test_inst_multi_turn_follows_mistral_convention() -> None:
    assert render_fallback(CONVERSATION, PromptFormat.INST) == (
        "<s>[INST] Be brief.\n\nHi [/INST] Hello!</s>[INST] Name a colour. [/INST]"
    )


def test_zephyr_multi_turn_appends_assistant_and_next_user() -> None:
    assert render_fallback(CONVERSATION, PromptFormat.ZEPHYR) == (
        "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello!\n<|user|>\nName a colour.\n<|assistant|>"
    )


def test_gemma_multi_turn_names_assistant_model() -> None:
    assert render_fallback(CONVERSATION, PromptFormat.GEMMA) == (
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nName a colour.<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_plain_multi_turn_is_a_labelled_transcript() -> None:
    assert render_fallback(CONVERSATION, PromptFormat.PLAIN) == (
        "System: Be brief.\nUser: Hi\nAssistant: Hello!\nUser: Name a colour.\nAssistant:"
    )


def test_trailing_assistant_is_rendered_as_a_completed_turn() -> None:
    messages = [msg("user", "Hi"), msg("assistant", "Hello!")]
    assert render_fallback(messages, PromptFormat.INST) == "<s>[INST] Hi [/INST] Hello!</s>"
    assert render_fallback(messages, PromptFormat.ZEPHYR) == (
        "<|user|>\nHi\n<|assistant|>\nHello!\n<|assistant|>"
    )
    assert render_fallback(messages, PromptFormat.PLAIN) == "User: Hi\nAssistant: Hello!\nAssistant:"


def test_system_only_conversation_renders_in_every_format() -> None:
    messages = [msg("system", "Say hi.")]
    assert render_fallback(messages, PromptFormat.INST) == "<s>[INST] Say hi. [/INST]"
    assert render_fallback(messages, PromptFormat.ZEPHYR) == "<|system|>\nSay hi.\n<|assistant|>"
    assert render_fallback(messages, PromptFormat.PLAIN) == "System: Say hi.\nAssistant:"


# --- normalization ------------------------------------------------------------------------------


def test_consecutive_messages_of_one_role_are_merged_with_a_blank_line() -> None:
    messages = [msg("user", "one"), msg("user", "two"), msg("assistant", "a"), msg("assistant", "b")]
    assert normalize_messages(messages, fold_system=False) == [
        Turn("user", "one\n\ntwo"),
        Turn("assistant", "a\n\nb"),
    ]


def test_developer_role_is_system() -> None:
    messages = [msg("developer", "Rules."), msg("system", "More rules."), msg("user", "Hi")]
    assert normalize_messages(messages, fold_system=False) == [
        Turn("system", "Rules.\n\nMore rules."),
        Turn("user", "Hi"),
    ]
    assert render_fallback(messages, PromptFormat.INST) == "<s>[INST] Rules.\n\nMore rules.\n\nHi [/INST]"


def test_text_content_parts_are_joined() -> None:
    messages = [msg("user", [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}])]
    assert render_fallback(messages, PromptFormat.INST) == "<s>[INST] Hello, world [/INST]"
    built = [Message(role="user", content=[TextPart(text="a"), TextPart(text="b")])]
    assert render_fallback(built, PromptFormat.PLAIN) == "ab"


def test_mid_conversation_system_message_folds_into_the_next_user_turn() -> None:
    messages = [
        msg("user", "Hi"),
        msg("assistant", "Hello"),
        msg("system", "Now French."),
        msg("user", "Bye"),
    ]
    assert normalize_messages(messages, fold_system=True) == [
        Turn("user", "Hi"),
        Turn("assistant", "Hello"),
        Turn("user", "Now French.\n\nBye"),
    ]
    assert normalize_messages(messages, fold_system=False)[2] == Turn("system", "Now French.")


def test_folding_puts_a_user_turn_before_a_leading_assistant_turn() -> None:
    with_system = [msg("system", "S"), msg("assistant", "A"), msg("user", "U")]
    assert normalize_messages(with_system, fold_system=True) == [
        Turn("user", "S"),
        Turn("assistant", "A"),
        Turn("user", "U"),
    ]
    assert normalize_messages([msg("assistant", "A")], fold_system=True) == [
        Turn("user", ""),
        Turn("assistant", "A"),
    ]


def test_empty_system_prompt_adds_no_blank_lines() -> None:
    messages = [msg("system", ""), msg("user", "Hi")]
    assert render_fallback(messages, PromptFormat.INST) == "<s>[INST] Hi [/INST]"


def test_assistant_without_content_is_an_empty_turn() -> None:
    messages = [msg("user", "Hi"), msg("assistant", None), msg("user", "Again")]
    assert render_fallback(messages, PromptFormat.INST) == "<s>[INST] Hi [/INST] </s>[INST] Again [/INST]"


# --- chat template input ------------------------------------------------------------------------


def test_template_messages_fold_system_for_inst_and_gemma() -> None:
    expected = [
        {"role": "user", "content": "Be brief.\n\nHi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Name a colour."},
    ]
    assert template_messages(CONVERSATION, PromptFormat.INST) == expected
    assert template_messages(CONVERSATION, PromptFormat.GEMMA) == expected


def test_template_messages_keep_system_for_zephyr_and_plain() -> None:
    messages = [msg("developer", "Be brief."), msg("user", "Hi"), msg("user", "there")]
    expected = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi\n\nthere"}]
    assert template_messages(messages, PromptFormat.ZEPHYR) == expected
    assert template_messages(messages, PromptFormat.PLAIN) == expected


def test_folding_formats() -> None:
    assert [f for f in PromptFormat if folds_system(f)] == [PromptFormat.INST, PromptFormat.GEMMA]


def test_implied_stops_per_format() -> None:
    assert implied_stops(PromptFormat.INST) == ("[INST]",)
    assert implied_stops(PromptFormat.ZEPHYR) == ("<|user|>", "<|system|>")
    assert implied_stops(PromptFormat.GEMMA) == ("<end_of_turn>", "<start_of_turn>")
    assert implied_stops(PromptFormat.PLAIN) == ("\nUser:", "\nSystem:")


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "phrase"),
    [
        ([], "at least one message"),
        (
            [
                msg(
                    "user",
                    [{"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": "x"}}],
                )
            ],
            "messages[0].content[1] is an image (image_url), and this model takes no images",
        ),
        ([msg("user", None)], "messages[0].content is required"),
        ([msg("system", None), msg("user", "Hi")], "messages[0].content is required"),
    ],
)
@pytest.mark.parametrize("fmt", list(PromptFormat))
def test_bad_messages_are_invalid_request_errors_on_messages(
    messages: list[Message], phrase: str, fmt: PromptFormat
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        render_fallback(messages, fmt)
    assert phrase in info.value.message
    assert info.value.param == "messages"
    assert info.value.status == 400
    with pytest.raises(InvalidRequestError):
        template_messages(messages, fmt)
