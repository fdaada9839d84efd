"""A generation request's prompt as the model's token ids.

Chat `messages` go through the tokenizer's chat template when it has one, else the format's
fallback rendering (worker/model/prompts.py); a raw `prompt` with a `system_prompt` is the seed's
`generate(prompt, system_prompt)` prompt (`seed_prompt`) and is cleaned as a chat reply; a raw
`prompt` without one (`/v1/completions`) is sent as is and its output is kept as generated
(request stops and the model's end markers only); `prompt_ids` are taken as they are, checked
against the vocabulary. A vision model's chat with images goes through its processor
(worker/model/images.py): image tokens expanded in the ids, pixel values beside them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from shared.errors import InvalidRequestError
from shared.generation import GenerateRequest, ImageURL, Message, message_images
from shared.model_types import PromptFormat
from worker.model.images import Vision
from worker.model.prompts import render_fallback, seed_prompt, template_messages
from worker.model.tool_calls import ToolFormat


class Prompt(NamedTuple):
    text: str | None  # None: given as token ids
    chat: bool  # a chat prompt: its reply is cleaned as one
    ids: list[int]
    # A prompt with images: the processor's tensors besides the ids (pixel values ...).
    inputs: dict[str, Any] | None = None


def prompt_of(
    tokenizer: Any,
    req: GenerateRequest,
    fmt: PromptFormat,
    tool_format: ToolFormat,
    vision: Vision | None = None,
) -> Prompt:
    """The prompt of `req` for a model prompted in `fmt` whose template calls tools in `tool_format`
    (and, for a vision model, takes images through `vision`)."""
    if req.prompt_ids is not None:
        return Prompt(None, False, _checked_ids(req.prompt_ids, len(tokenizer)))
    text, chat = _prompt_text(tokenizer, req, fmt, tool_format, images=vision is not None)
    images = _images(req.messages or [])
    if vision is None or not images:
        return Prompt(text, chat, _tokenize(tokenizer, text))
    bos = tokenizer.bos_token
    ids, inputs = vision.model_inputs(text, images, add_special=not (bos and text.startswith(bos)))
    return Prompt(text, chat, ids, inputs)


def _images(messages: list[Message]) -> list[ImageURL]:
    """The images the prompt shows, in order (assistant and tool turns carry none)."""
    return [i for m in messages if m.role in ("system", "developer", "user") for i in message_images(m)]


def prompt_tokens(
    tokenizer: Any,
    req: GenerateRequest,
    fmt: PromptFormat,
    tool_format: ToolFormat,
    *,
    generation_prompt: bool = True,
    special_tokens: bool | None = None,
    vision: Vision | None = None,
) -> list[int]:
    """The token ids of `req`'s prompt (/tokenize, count_tokens): as `prompt_of` makes them, or with
    the generation prompt left off the chat template's rendering and special tokens added or not."""
    if req.prompt_ids is not None:
        return _checked_ids(req.prompt_ids, len(tokenizer))
    text, _ = _prompt_text(
        tokenizer, req, fmt, tool_format, generation_prompt=generation_prompt, images=vision is not None
    )
    images = _images(req.messages or [])
    if vision is not None and images:  # image tokens expanded, as the model sees them
        bos = tokenizer.bos_token
        add = special_tokens if special_tokens is not None else not (bos and text.startswith(bos))
        return vision.model_inputs(text, images, add_special=add)[0]
    if special_tokens is None:
        return _tokenize(tokenizer, text)
    ids: list[int] = tokenizer(text, add_special_tokens=special_tokens).input_ids
    return ids


def _prompt_text(
    tokenizer: Any,
    req: GenerateRequest,
    fmt: PromptFormat,
    tool_format: ToolFormat,
    *,
    generation_prompt: bool = True,
    images: bool = False,
) -> tuple[str, bool]:
    if req.messages is not None:
        if req.prompt is not None:
            raise InvalidRequestError("give either messages or prompt, not both", param="messages")
        return _chat_text(tokenizer, req.messages, req, fmt, tool_format, generation_prompt, images), True
    if req.prompt is None:
        raise InvalidRequestError("either messages or prompt is required", param="messages")
    if req.system_prompt and fmt is PromptFormat.TEMPLATE:  # the seed's API on a chat template's model
        turns = [Message(role="system", content=req.system_prompt), Message(role="user", content=req.prompt)]
        return _chat_text(tokenizer, turns, req, fmt, tool_format, generation_prompt), True
    if req.system_prompt:
        return seed_prompt(req.prompt, req.system_prompt, fmt), True
    return req.prompt, False


def _chat_text(
    tokenizer: Any,
    messages: list[Message],
    req: GenerateRequest,
    fmt: PromptFormat,
    tool_format: ToolFormat,
    generation_prompt: bool = True,
    images: bool = False,
) -> str:
    tools = req.tools.tools if req.tools is not None else None
    if getattr(tokenizer, "chat_template", None):
        native = tools is not None and tool_format is not ToolFormat.GENERIC
        turns = template_messages(messages, fmt, tools=tools, native_tools=native, images=images)
        return _apply_template(
            tokenizer, turns, tools if native else None, req.template_kwargs or {}, generation_prompt
        )
    return render_fallback(messages, fmt, tools=tools)


def _apply_template(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    extra: dict[str, Any],
    generation_prompt: bool = True,
) -> str:
    import jinja2

    try:
        text: str = tokenizer.apply_chat_template(
            messages,
            tools=tools,
            tokenize=False,
            add_generation_prompt=generation_prompt,
            **_template_vars(extra),
        )
    except jinja2.TemplateError as exc:  # the template's raise_exception(...): a bad conversation
        raise InvalidRequestError(
            f"the model's chat template refused the messages: {exc}", param="messages"
        ) from exc
    return text


# apply_chat_template's own arguments: a request's template variables may not set them.
_RESERVED = frozenset({"conversation", "messages", "tools", "documents", "tokenize", "add_generation_prompt",
                       "continue_final_message", "return_dict", "return_tensors", "chat_template", "padding",
                       "truncation", "max_length", "tokenizer_kwargs",
                       "return_assistant_tokens_mask"})  # fmt: skip


def _template_vars(extra: dict[str, Any]) -> dict[str, Any]:
    reserved = sorted(_RESERVED & set(extra))
    if reserved:
        raise InvalidRequestError(
            f"chat_template_kwargs may not set {', '.join(reserved)}", param="chat_template_kwargs"
        )
    return extra


def _tokenize(tokenizer: Any, text: str) -> list[int]:
    """Token ids of the prompt; no second BOS when the text (e.g. a chat template's) has one."""
    bos = tokenizer.bos_token
    ids: list[int] = tokenizer(text, add_special_tokens=not (bos and text.startswith(bos))).input_ids
    if not ids:  # an empty raw prompt: start from BOS (or EOS, GPT-2's document separator)
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if start is None:
            raise InvalidRequestError("the prompt is empty", param="prompt")
        ids = [start]
    return ids


def _checked_ids(ids: list[int], vocab_size: int) -> list[int]:
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise InvalidRequestError(
            f"token id {bad[0]} is outside this model's vocabulary (0..{vocab_size - 1})", param="prompt"
        )
    if not ids:
        raise InvalidRequestError("the prompt is empty", param="prompt")
    return ids
