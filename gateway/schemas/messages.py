"""`/v1/messages` (Anthropic's Messages API): the request, translated into one chat generation, and
the message it answers.

`system` becomes a system message; a user turn's `tool_result` blocks become tool messages (before
its text, as Anthropic orders them), an assistant turn's `tool_use` blocks its tool calls. `tools`
and `tool_choice` map onto chat's (`any` is `required`, `tool` a named function, both constrained
by the worker's grammar; `disable_parallel_tool_use` is `parallel_tool_calls: false`), so the same
tool parsing and constrained decoding run. Thinking blocks in a history are dropped (the model's own
reasoning is not replayed); images and documents are a 400 that says so.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from gateway.schemas.common import INT64_MAX, TopK, reject_if, stop_list, top_k_value
from gateway.schemas.json_schema import names_a_model
from gateway.schemas.tools import FunctionDef, NamedFunction, NamedToolChoice, Tool, ToolChoice, tool_plan
from shared.errors import InvalidRequestError
from shared.generation import FunctionCall, GenerateRequest, GenerateResult, Message, SamplingParams, ToolCall
from shared.settings import Settings

# Anthropic's ranges: temperature 0..1 (not OpenAI's 0..2).
AnthropicTemperature = Annotated[float, Meta(ge=0, le=1)]
AnthropicTopP = Annotated[float, Meta(gt=0, le=1)]
MaxTokens = Annotated[int, Meta(ge=1, le=INT64_MAX)]
# Blocks the translation drops: the model's reasoning from earlier turns.
_DROPPED = ("thinking", "redacted_thinking")
# The blocks as the document describes them: what the decoders take as any object, they read as these.
_TEXT: dict[str, Any] = {"type": "string"}
_TEXT_BLOCK = {"type": "object", "required": ["type", "text"],
               "properties": {"type": {"const": "text"}, "text": _TEXT}}
_TEXTS = {"anyOf": [_TEXT, {"type": "array", "items": _TEXT_BLOCK}]}


class TextBlock(Struct, kw_only=True, tag="text", tag_field="type"):
    text: str


class ToolUseBlock(Struct, kw_only=True, tag="tool_use", tag_field="type"):
    id: str
    name: str
    input: dict[str, Any]


class AnthropicTool(Struct, kw_only=True):
    type: str | None = None  # "custom" (or none): Anthropic's server tools (web search, ...) are not here
    name: str
    description: str | None = None
    input_schema: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object"})

    @classmethod
    def refine_json_schema(cls, schema: dict[str, Any], settings: Settings) -> None:
        schema["properties"]["type"] = {"enum": ["custom", None], "default": None}


class AnthropicToolChoice(Struct, kw_only=True):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None

    @classmethod
    def refine_json_schema(cls, schema: dict[str, Any], settings: Settings) -> None:
        # `tool` names its tool.
        schema["anyOf"] = [
            {"properties": {"type": {"enum": ["auto", "any", "none"]}}},
            {"properties": {"name": _TEXT}, "required": ["name"]},
        ]


class MessageParam(Struct, kw_only=True):
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]

    @classmethod
    def refine_json_schema(cls, schema: dict[str, Any], settings: Settings) -> None:
        """The content blocks by role (_turn reads them): a user's tool results, an assistant's tool uses."""
        thinking = {"type": "object", "required": ["type"],
                    "properties": {"type": {"enum": ["thinking", "redacted_thinking"]}}}
        use = {"type": "object", "required": ["type", "id", "name", "input"], "properties": {
            "type": {"const": "tool_use"}, "id": _TEXT, "name": _TEXT, "input": {"type": "object"}}}
        result = {"type": "object", "required": ["type", "tool_use_id"], "properties": {
            "type": {"const": "tool_result"}, "tool_use_id": _TEXT, "is_error": {"type": ["boolean", "null"]},
            "content": {"anyOf": [_TEXT, {"type": "null"}, {"type": "array", "items": _TEXT_BLOCK}]}}}

        def turn(role: str, block: dict[str, Any]) -> dict[str, Any]:
            blocks = {"type": "array", "items": {"anyOf": [_TEXT_BLOCK, block, thinking]}}
            return {"type": "object", "required": ["role", "content"],
                    "properties": {"role": {"const": role}, "content": {"anyOf": [_TEXT, blocks]}}}

        schema.clear()
        schema["anyOf"] = [turn("user", result), turn("assistant", use)]


class RequestMetadata(Struct, kw_only=True):
    user_id: str | None = None


class CountTokensRequest(Struct, kw_only=True):
    """`/v1/messages/count_tokens`' body: the conversation and its tools; `/v1/messages` adds the rest."""

    model: str | None = None
    messages: Annotated[list[MessageParam], Meta(min_length=1)]
    system: str | list[dict[str, Any]] | None = None
    tools: list[AnthropicTool] | None = None
    tool_choice: AnthropicToolChoice | None = None
    # Accepted and not acted on: Dukat's models think (or not) as their chat template has them.
    thinking: dict[str, Any] | None = None

    @classmethod
    def refine_json_schema(cls, schema: dict[str, Any], settings: Settings) -> None:
        names_a_model(schema, settings)
        schema["properties"]["system"] = {"anyOf": [_TEXTS, {"type": "null"}], "default": None}

    def token_request(self) -> GenerateRequest:
        """The prompt as generation would build it (tools included), for counting its tokens."""
        use, _ = tool_plan(self.chat_tools(), self.chat_tool_choice(), self.parallel_tool_calls)
        return GenerateRequest(messages=self.chat_messages(), tools=use)

    @property
    def parallel_tool_calls(self) -> bool | None:
        choice = self.tool_choice
        if choice is None or choice.disable_parallel_tool_use is None:
            return None
        return not choice.disable_parallel_tool_use

    def chat_messages(self) -> list[Message]:
        out: list[Message] = []
        if self.system:
            out.append(Message(role="system", content=_text(self.system, "system")))
        for i, message in enumerate(self.messages):
            out += _turn(message, f"messages[{i}]")
        return out

    def chat_tools(self) -> list[Tool] | None:
        if not self.tools:
            return None
        for i, tool in enumerate(self.tools):
            reject_if(
                tool.type not in (None, "custom"),
                f"tools of type {tool.type!r} (Anthropic's server tools) are not supported; send custom "
                "tools with an input_schema",
                f"tools[{i}]",
            )
        return [
            Tool(function=FunctionDef(name=t.name, description=t.description, parameters=t.input_schema))
            for t in self.tools
        ]

    def chat_tool_choice(self) -> ToolChoice | None:
        choice = self.tool_choice
        if choice is None:
            return None
        if choice.type == "tool":
            reject_if(not choice.name, "tool_choice of type tool needs a name", "tool_choice.name")
            return NamedToolChoice(function=NamedFunction(name=choice.name or ""))
        return {"auto": "auto", "any": "required", "none": "none"}[choice.type]  # type: ignore[return-value]


class MessagesRequest(CountTokensRequest, kw_only=True):
    max_tokens: MaxTokens
    stop_sequences: list[str] | None = None
    temperature: AnthropicTemperature | None = None
    top_p: AnthropicTopP | None = None
    top_k: TopK | None = None
    metadata: RequestMetadata | None = None
    stream: bool | None = None

    def generate_request(self, request_id: str) -> GenerateRequest:
        use, forced = tool_plan(self.chat_tools(), self.chat_tool_choice(), self.parallel_tool_calls)
        params = SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=top_k_value(self.top_k),
            max_new_tokens=self.max_tokens,
            stop=stop_list(self.stop_sequences),
        )
        return GenerateRequest(
            messages=self.chat_messages(), params=params, request_id=request_id, tools=use, constraint=forced
        )


def _text(content: str | list[dict[str, Any]], where: str) -> str:
    """The text of a string or a list of text blocks (anything else is a 400 naming it)."""
    if isinstance(content, str):
        return content
    texts = []
    for j, block in enumerate(content):
        kind = block.get("type")
        if kind in _DROPPED:
            continue
        reject_if(
            kind != "text" or not isinstance(block.get("text"), str),
            f"content blocks of type {kind!r} are not supported here; send text blocks",
            f"{where}.content[{j}]" if where != "system" else f"system[{j}]",
        )
        texts.append(block["text"])
    return "".join(texts)


def _turn(message: MessageParam, where: str) -> list[Message]:
    """One Anthropic message as chat messages: tool results first (one tool message each), then the
    text; an assistant's tool_use blocks are its tool calls."""
    if isinstance(message.content, str):
        return [Message(role=message.role, content=message.content)]
    texts: list[str] = []
    calls: list[ToolCall] = []
    results: list[Message] = []
    for j, block in enumerate(message.content):
        at = f"{where}.content[{j}]"
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use" and message.role == "assistant":
            use = _convert(block, ToolUseBlock, at)
            arguments = msgspec.json.encode(use.input).decode()
            calls.append(ToolCall(id=use.id, function=FunctionCall(name=use.name, arguments=arguments)))
        elif kind == "tool_result" and message.role == "user":
            result = _convert(block, _ToolResultBlock, at)
            content = "" if result.content is None else _text(result.content, at)
            results.append(Message(role="tool", tool_call_id=result.tool_use_id, content=content))
        elif kind not in _DROPPED:
            raise InvalidRequestError(
                f"content blocks of type {kind!r} are not supported in a {message.role} turn; send text"
                + (", tool_use" if message.role == "assistant" else ", tool_result")
                + " blocks",
                param=at,
            )
    text = "".join(texts)
    if message.role == "assistant":
        return [Message(role="assistant", content=text or None if calls else text, tool_calls=calls or None)]
    return [*results, *([Message(role="user", content=text)] if text or not results else [])]


class _ToolResultBlock(Struct, kw_only=True):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[dict[str, Any]] | None = None
    is_error: bool | None = None


def _convert(block: dict[str, Any], kind: type[Any], where: str) -> Any:
    try:
        return msgspec.convert(block, kind)
    except msgspec.ValidationError as exc:
        raise InvalidRequestError(f"{where}: {exc}", param=where) from exc


# ---- the answer ----------------------------------------------------------------------------------

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]
ContentBlock = TextBlock | ToolUseBlock


class MessageUsage(Struct, kw_only=True):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class MessageObject(Struct, kw_only=True):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    content: list[ContentBlock]
    model: str
    stop_reason: StopReason | None = None
    stop_sequence: str | None = None
    usage: MessageUsage


class TokenCount(Struct, kw_only=True):
    """`/v1/messages/count_tokens`' answer."""

    input_tokens: int


def message_id(request_id: str) -> str:
    return f"msg_{request_id}"


def stop_reason_of(result: GenerateResult) -> StopReason:
    if result.tool_calls:
        return "tool_use"
    return "max_tokens" if result.finish_reason == "length" else "end_turn"


def content_of(result: GenerateResult) -> list[ContentBlock]:
    """The result's text block (when it has text, or nothing else) and a tool_use block per call."""
    blocks: list[ContentBlock] = []
    if result.text or not result.tool_calls:
        blocks.append(TextBlock(text=result.text))
    for call in result.tool_calls or []:
        arguments = _arguments(call.function.arguments)
        blocks.append(ToolUseBlock(id=call.id, name=call.function.name, input=arguments))
    return blocks


def _arguments(arguments: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    try:
        value = msgspec.json.decode(arguments)
    except msgspec.DecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def message_of(result: GenerateResult, model: str, request_id: str) -> MessageObject:
    return MessageObject(
        id=message_id(request_id),
        content=content_of(result),
        model=model,
        stop_reason=stop_reason_of(result),
        usage=MessageUsage(input_tokens=result.prompt_tokens, output_tokens=result.completion_tokens),
    )
