"""From an OpenAI message list to a model prompt: normalization, the fallback formats, template input.

A model whose tokenizer has a chat template gets `template_messages(...)` handed to
`tokenizer.apply_chat_template`; any other model gets `render_fallback(...)`, the seed's formats
extended to many turns. Both start from `normalize_messages`, so both see the same conversation:

- content (a string or a list of text parts) becomes text; an `image_url` part, where images are
  taken (a vision model), becomes IMAGE_MARK in the text, and the template gets it back as an
  `{"type": "image"}` part in place; any other part is a 400;
- role "developer" is "system";
- tools: a template that renders `tools=` itself (`native_tools`) gets assistant `tool_calls` and
  `tool` messages as fields, as Hugging Face templates expect them (arguments as objects); any other
  model gets the generic format of `worker/model/tool_calls.py`: the tools described in the system
  message, calls as `<tool_call>` blocks in the assistant's text, each tool result (role "tool", or
  legacy "function") as a user turn `<tool_response>\n{result}\n</tool_response>`;
- consecutive messages of one role are merged, joined by a blank line ("\n\n");
- for formats that fold the system prompt (INST, GEMMA: their templates refuse a system role and
  need user/assistant alternation starting with a user turn) each system message becomes user text
  in place, so it merges into the user turn next to it (`{system}\n\n{user}`); a conversation that
  would then start with an assistant turn gets an empty user turn first.

A trailing assistant message is rendered as a completed turn, not continued.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

from shared.errors import InvalidRequestError
from shared.generation import Message, ToolCall, message_text
from shared.model_types import PromptFormat
from worker.model.tool_calls import arguments_value, generic_call_text, generic_tools_prompt

TurnRole = Literal["system", "user", "assistant", "tool"]

# Where an image sits in a turn's text (U+FFFC, the object replacement character; removed from
# clients' own text): a template gets `{"type": "image"}` parts there.
IMAGE_MARK = "\ufffc"


class Turn(NamedTuple):
    """One normalized message: a known role and plain text (and, for native tool templates, the
    message's tool fields)."""

    role: TurnRole
    text: str
    fields: tuple[tuple[str, Any], ...] = ()


# Formats whose chat templates raise on a system role or on non-alternating roles.
_FOLDING_FORMATS = frozenset({PromptFormat.INST, PromptFormat.GEMMA})

# Strings that mean "the model has started a new turn": generation stops there.
_IMPLIED_STOPS: dict[PromptFormat, tuple[str, ...]] = {
    PromptFormat.INST: ("[INST]",),
    PromptFormat.ZEPHYR: ("<|user|>", "<|system|>"),
    PromptFormat.GEMMA: ("<end_of_turn>", "<start_of_turn>"),
    PromptFormat.PLAIN: ("\nUser:", "\nSystem:"),
    PromptFormat.TEMPLATE: (),  # the template's turn end is an end of sequence
}

_PLAIN_LABELS: dict[TurnRole, str] = {"system": "System", "user": "User", "assistant": "Assistant"}


def folds_system(fmt: PromptFormat) -> bool:
    """Whether `fmt` folds system messages into user turns (INST and GEMMA)."""
    return fmt in _FOLDING_FORMATS


def implied_stops(fmt: PromptFormat) -> tuple[str, ...]:
    """Stop strings a chat prompt in `fmt` implies: the model opening a new turn."""
    return _IMPLIED_STOPS[fmt]


def normalize_messages(
    messages: Sequence[Message],
    *,
    fold_system: bool,
    tools: Sequence[dict[str, Any]] | None = None,
    native_tools: bool = False,
    images: bool = False,
) -> list[Turn]:
    """The conversation as merged text turns (see the module doc for the rules); `images`: image
    parts are taken (as IMAGE_MARK).

    Raises InvalidRequestError (param "messages") for an empty list, a non-text content part,
    a missing content on a non-assistant message or an unsupported role.
    """
    if not messages:
        raise InvalidRequestError("messages must contain at least one message", param="messages")
    turns = [_to_turn(i, m, native_tools, images) for i, m in enumerate(messages)]
    if tools and not native_tools:
        turns.insert(0, Turn("system", generic_tools_prompt(tools)))
    if fold_system:
        turns = [Turn("user", t.text) if t.role == "system" else t for t in turns]
    merged = _merge(turns)
    if fold_system and merged[0].role == "assistant":
        merged.insert(0, Turn("user", ""))
    return merged


def template_messages(
    messages: Sequence[Message],
    fmt: PromptFormat,
    *,
    tools: Sequence[dict[str, Any]] | None = None,
    native_tools: bool = False,
    images: bool = False,
) -> list[dict[str, Any]]:
    """What to hand to `tokenizer.apply_chat_template`: `[{"role", "content", ...}]`, normalized;
    a turn with images has content parts (`{"type": "image"}`, `{"type": "text", "text"}`)."""
    fold = folds_system(fmt)
    turns = normalize_messages(
        messages, fold_system=fold, tools=tools, native_tools=native_tools, images=images
    )
    return [{"role": t.role, "content": _content(t.text), **dict(t.fields)} for t in turns]


def _content(text: str) -> str | list[dict[str, str]]:
    if IMAGE_MARK not in text:
        return text
    parts: list[dict[str, str]] = []
    for i, piece in enumerate(text.split(IMAGE_MARK)):
        if i:
            parts.append({"type": "image"})
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


def render_fallback(
    messages: Sequence[Message], fmt: PromptFormat, *, tools: Sequence[dict[str, Any]] | None = None
) -> str:
    """The prompt for a model without a chat template.

    INST:   `<s>[INST] {system}\\n\\n{u1} [/INST] {a1}</s>[INST] {u2} [/INST]`
    ZEPHYR: `<|system|>\\n{s}\\n<|user|>\\n{u1}\\n<|assistant|>\\n{a1}\\n<|user|>\\n{u2}\\n<|assistant|>`
            (each message is `<|role|>\\n{text}`, joined by "\\n", then "\\n<|assistant|>")
    GEMMA:  `<start_of_turn>user\\n{system}\\n\\n{u1}<end_of_turn>\\n<start_of_turn>model\\n{a1}`
            `<end_of_turn>\\n...<start_of_turn>model\\n`
    PLAIN:  a lone user message as is; else `System: {s}\\nUser: {u1}\\nAssistant: {a1}\\n...`
            ending with `\\nAssistant:`
    """
    turns = normalize_messages(messages, fold_system=folds_system(fmt), tools=tools)
    match fmt:
        case PromptFormat.INST:
            return _render_inst(turns)
        case PromptFormat.ZEPHYR:
            return _render_zephyr(turns)
        case PromptFormat.GEMMA:
            return _render_gemma(turns)
        case PromptFormat.PLAIN | PromptFormat.TEMPLATE:
            return _render_plain(turns)
    raise AssertionError(f"unhandled prompt format {fmt!r}")


def seed_prompt(prompt: str, system_prompt: str | None, fmt: PromptFormat) -> str:
    """The seed's `generate(prompt, system_prompt)` prompt: [system?, user] rendered in `fmt`."""
    messages = [Message(role="user", content=prompt)]
    if system_prompt:
        messages.insert(0, Message(role="system", content=system_prompt))
    return render_fallback(messages, fmt)


def _to_turn(index: int, message: Message, native_tools: bool = False, images: bool = False) -> Turn:
    where = f"messages[{index}]"
    content = message.content
    if isinstance(content, list):
        for j, part in enumerate(content):
            if part.type == "image_url" and not images:
                raise InvalidRequestError(
                    f"{where}.content[{j}] is an image (image_url), and this model takes no images "
                    "(a text-only model); send text content parts, or use a vision model",
                    param="messages",
                )
            if part.type not in ("text", "image_url"):
                raise InvalidRequestError(
                    f"{where}.content[{j}] has type {part.type!r}; supported content parts: text, image_url",
                    param="messages",
                )
    match message.role:
        case "system" | "developer":
            role: TurnRole = "system"
        case "user":
            role = "user"
        case "assistant":
            return _assistant_turn(message, native_tools)
        case "tool" | "function":
            return _tool_turn(message, native_tools)
        case other:
            raise InvalidRequestError(
                f"{where} has role {other!r}; supported roles: system, developer, user, assistant, tool",
                param="messages",
            )
    if content is None:
        # Only an assistant turn may lack content (a tool-call turn).
        raise InvalidRequestError(f"{where}.content is required for role {message.role!r}", param="messages")
    return Turn(role, _marked_text(message) if images else message_text(message))


def _marked_text(message: Message) -> str:
    """The message's text with IMAGE_MARK where each image part is."""
    if not isinstance(message.content, list):
        return message_text(message).replace(IMAGE_MARK, "")
    return "".join(
        IMAGE_MARK if part.type == "image_url" else part.text.replace(IMAGE_MARK, "")
        for part in message.content
    )


def _assistant_turn(message: Message, native_tools: bool) -> Turn:
    calls = list(message.tool_calls or [])
    if message.function_call is not None:
        calls.append(ToolCall(id="call_0", function=message.function_call))
    text = message_text(message)
    if not calls:
        return Turn("assistant", text)
    if not native_tools:
        return Turn("assistant", "\n".join(t for t in (text, generic_call_text(calls)) if t))
    as_fields = [
        {
            "id": c.id,
            "type": "function",
            "function": {"name": c.function.name, "arguments": arguments_value(c.function)},
        }
        for c in calls
    ]
    return Turn("assistant", text, (("tool_calls", as_fields),))


def _tool_turn(message: Message, native_tools: bool) -> Turn:
    text = message_text(message)
    if not native_tools:
        return Turn("user", f"<tool_response>\n{text}\n</tool_response>")
    fields: list[tuple[str, Any]] = [("tool_call_id", message.tool_call_id or "")]
    if message.name:
        fields.append(("name", message.name))
    return Turn("tool", text, tuple(fields))


def _merge(turns: list[Turn]) -> list[Turn]:
    merged: list[Turn] = []
    for turn in turns:
        plain = turn.role != "tool" and not (turn.fields or (merged and merged[-1].fields))
        if merged and merged[-1].role == turn.role and plain:
            texts = [t for t in (merged[-1].text, turn.text) if t]
            merged[-1] = Turn(turn.role, "\n\n".join(texts))
        else:
            merged.append(turn)
    return merged


def _render_inst(turns: list[Turn]) -> str:
    parts = ["<s>"]
    for turn in turns:
        parts.append(f"[INST] {turn.text} [/INST]" if turn.role == "user" else f" {turn.text}</s>")
    return "".join(parts)


def _render_zephyr(turns: list[Turn]) -> str:
    blocks = [f"<|{turn.role}|>\n{turn.text}" for turn in turns]
    return "\n".join([*blocks, "<|assistant|>"])


def _render_gemma(turns: list[Turn]) -> str:
    parts = []
    for turn in turns:
        role = "model" if turn.role == "assistant" else "user"
        parts.append(f"<start_of_turn>{role}\n{turn.text}<end_of_turn>\n")
    parts.append("<start_of_turn>model\n")
    return "".join(parts)


def _render_plain(turns: list[Turn]) -> str:
    if len(turns) == 1 and turns[0].role == "user":
        return turns[0].text  # a base model continues raw text best
    lines = [f"{_PLAIN_LABELS[t.role]}: {t.text}" if t.text else f"{_PLAIN_LABELS[t.role]}:" for t in turns]
    return "\n".join([*lines, "Assistant:"])
