"""`/v1/responses` (OpenAI's Responses API): the request, translated into one chat generation, and
the response object.

Input items become chat messages: `instructions` a system message first, `message` items by role,
`function_call` items an assistant turn's tool calls, `function_call_output` items tool messages.
`text.format` and function `tools` use the same constrained decoding and tool parsing as chat.
Dukat keeps no state (any gateway replica answers any request), so nothing is stored: a
`previous_response_id` or a `conversation` is a 400, and a response is never retrievable later.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from gateway.schemas.common import INT64_MAX, Penalty, Temperature, TopLogprobs, TopP, now, reject_if
from gateway.schemas.json_schema import names_a_model
from gateway.schemas.logprobs import ResponseLogprob, response_logprobs
from gateway.schemas.tools import (
    FunctionDef,
    JsonSchemaFormat,
    NamedFunction,
    NamedToolChoice,
    ResponseFormat,
    Tool,
    ToolChoice,
    tool_plan,
)
from shared.errors import InvalidRequestError
from shared.generation import (
    ENGINE_DEFAULTS,
    FunctionCall,
    GenerateRequest,
    GenerateResult,
    ImageURL,
    Message,
    SamplingParams,
    TextPart,
    ToolCall,
)
from shared.settings import Settings

STATELESS = (
    "Dukat keeps no conversation state (its gateway is stateless): send the whole conversation as "
    "input items instead of {what}"
)


class TextFormat(Struct, kw_only=True, omit_defaults=True):
    type: Literal["text", "json_object", "json_schema"]  # always written
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = msgspec.field(default=None, name="schema")
    strict: bool | None = None


def _plain_text() -> TextFormat:
    return TextFormat(type="text")


class TextConfig(Struct, kw_only=True):
    format: TextFormat = msgspec.field(default_factory=_plain_text)


class FunctionTool(Struct, kw_only=True):
    type: str = "function"
    name: str = ""
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @classmethod
    def refine_json_schema(cls, schema: dict[str, Any], settings: Settings) -> None:
        # Another type is refused (CreateResponseRequest._tools), so "function" is all it takes.
        schema["properties"]["type"] = {"const": "function", "default": "function"}


class NamedFunctionChoice(Struct, kw_only=True):
    type: Literal["function"] = "function"
    name: str


Include = Literal[
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "message.input_image.image_url",
    "computer_call_output.output.image_url",
    "code_interpreter_call.outputs",
    "reasoning.encrypted_content",
    "message.output_text.logprobs",
]
ServiceTier = Literal["auto", "default", "flex", "scale", "priority"]


class Reasoning(Struct, kw_only=True):
    effort: str | None = None
    summary: str | None = None


class CreateResponseRequest(Struct, kw_only=True):
    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: Annotated[int, Meta(ge=1, le=INT64_MAX)] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    text: TextConfig | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    stream: bool | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    top_logprobs: TopLogprobs | None = None
    include: list[Include] | None = None
    # Echoed; they change nothing here: no built-in tools to count, no tiers, no reasoning effort
    # (issue 21), one safety and cache policy.
    background: bool | None = None
    service_tier: ServiceTier | None = None
    reasoning: Reasoning | None = None
    max_tool_calls: Annotated[int, Meta(ge=0)] | None = None
    safety_identifier: Annotated[str, Meta(max_length=64)] | None = None
    prompt_cache_key: str | None = None

    @property
    def logprobs(self) -> int | None:
        """Top alternatives per token when `include` asks for logprobs, else None."""
        wanted = self.include is not None and "message.output_text.logprobs" in self.include
        return (self.top_logprobs or 0) if wanted else None

    @classmethod
    def refine_json_schema(cls, schema: dict[str, Any], settings: Settings) -> None:
        names_a_model(schema, settings)
        props = schema["properties"]
        # No state: previous_response_id and conversation only null (generate_request refuses the rest).
        props["previous_response_id"] = {"type": "null", "default": None}
        props["conversation"] = {"type": "null", "default": None}
        props["background"] = {"anyOf": [{"const": False}, {"type": "null"}], "default": None}  # not true
        props["input"] = _input_schema()

    def generate_request(self, request_id: str) -> GenerateRequest:
        reject_if(
            self.previous_response_id is not None,
            STATELESS.format(what="previous_response_id"),
            "previous_response_id",
        )
        reject_if(self.conversation is not None, STATELESS.format(what="a conversation"), "conversation")
        reject_if(bool(self.background), STATELESS.format(what="a background response"), "background")
        use, forced = tool_plan(self._tools(), self._tool_choice(), self.parallel_tool_calls)
        fmt = self.text.format if self.text is not None else _plain_text()
        schema = JsonSchemaFormat(name=fmt.name or "response", schema_=fmt.schema_, strict=fmt.strict)
        formatted = ResponseFormat(type=fmt.type, json_schema=schema).constraint()
        if formatted is not None:
            formatted.param = "text.format"
        params = SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            max_new_tokens=self.max_output_tokens,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
        )
        return GenerateRequest(
            messages=self.messages(),
            params=params,
            request_id=request_id,
            tools=use,
            constraint=forced or formatted,
            logprobs=self.logprobs,
        )

    def messages(self) -> list[Message]:
        """The input items (and instructions) as chat messages."""
        out = [Message(role="system", content=self.instructions)] if self.instructions else []
        items = [{"role": "user", "content": self.input}] if isinstance(self.input, str) else self.input
        reject_if(not items, "input must not be empty", "input")
        for i, item in enumerate(items):
            _add_item(out, item, f"input[{i}]")
        return out

    def _tools(self) -> list[Tool] | None:
        if not self.tools:
            return None
        for i, tool in enumerate(self.tools):
            reject_if(
                tool.type != "function",
                f"tools of type {tool.type!r} are not supported; send function tools",
                f"tools[{i}]",
            )
        return [
            Tool(
                function=FunctionDef(
                    name=t.name, description=t.description, parameters=t.parameters, strict=t.strict
                )
            )
            for t in self.tools
        ]

    def _tool_choice(self) -> ToolChoice | None:
        if isinstance(self.tool_choice, NamedFunctionChoice):
            return NamedToolChoice(function=NamedFunction(name=self.tool_choice.name))
        return self.tool_choice


class _MessageItem(Struct, kw_only=True):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[dict[str, Any]]


class _FunctionCallItem(Struct, kw_only=True):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str


class _FunctionOutputItem(Struct, kw_only=True):
    type: Literal["function_call_output"]
    call_id: str
    output: str | list[dict[str, Any]]


_TEXT_PARTS = ("input_text", "output_text", "text")
_IMAGE_PART = {
    "type": "object", "required": ["type", "image_url"],
    "properties": {"type": {"const": "input_image"}, "image_url": {"type": "string"}, "detail": {}},
}


def _input_schema() -> dict[str, Any]:
    """`input` as _add_item reads it: a text, or items (message, function_call, function_call_output)
    whose content is a text or text parts."""
    text: dict[str, Any] = {"type": "string"}
    part = {
        "type": "object", "required": ["type"],
        "properties": {"type": {"enum": list(_TEXT_PARTS)}, "text": {}},
    }
    content = {"anyOf": [text, {"type": "array", "items": {"anyOf": [part, _IMAGE_PART]}}]}
    message = {
        "type": "object", "required": ["role", "content"],
        "properties": {
            "type": {"const": "message"}, "role": {"enum": ["user", "system", "developer", "assistant"]},
            "content": content,
        },
    }
    call = {
        "type": "object", "required": ["type", "call_id", "name", "arguments"],
        "properties": {"type": {"const": "function_call"}, "call_id": text, "name": text, "arguments": text},
    }
    output = {
        "type": "object", "required": ["type", "call_id", "output"],
        "properties": {"type": {"const": "function_call_output"}, "call_id": text, "output": content},
    }
    items = {"type": "array", "minItems": 1, "items": {"anyOf": [message, call, output]}}
    return {"anyOf": [text, items]}


def _add_item(messages: list[Message], item: dict[str, Any], where: str) -> None:
    """`item` appended to `messages` in place (a copy per item was quadratic: 50,000 items took 12 s)."""
    try:
        kind = item.get("type", "message")
        if kind == "message":
            message = msgspec.convert(item, _MessageItem)
            messages.append(Message(role=message.role, content=_parts(message.content, where)))
            return
        if kind == "function_call":
            call = msgspec.convert(item, _FunctionCallItem)
            tool_call = ToolCall(
                id=call.call_id, function=FunctionCall(name=call.name, arguments=call.arguments)
            )
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant" and last.tool_calls:
                last.tool_calls.append(tool_call)  # consecutive calls are one assistant turn
            else:
                messages.append(Message(role="assistant", tool_calls=[tool_call]))
            return
        if kind == "function_call_output":
            result = msgspec.convert(item, _FunctionOutputItem)
            text = _text(result.output, where)
            messages.append(Message(role="tool", tool_call_id=result.call_id, content=text))
            return
    except msgspec.ValidationError as exc:
        raise InvalidRequestError(f"{where}: {exc}", param=where) from exc
    raise InvalidRequestError(
        f"{where} has type {kind!r}; supported: message, function_call, function_call_output", param=where
    )


def _parts(content: str | list[dict[str, Any]], where: str) -> str | list[TextPart]:
    """A message's content: its text, or its parts where it shows images (`input_image` with an
    `image_url`, as chat's `image_url` parts; a `file_id` needs a file store Dukat has not got)."""
    if isinstance(content, str) or not any(part.get("type") == "input_image" for part in content):
        return _text(content, where)
    parts: list[TextPart] = []
    for j, part in enumerate(content):
        if part.get("type") != "input_image":
            parts.append(TextPart(text=_text([part], where)))
            continue
        url = part.get("image_url")
        reject_if(
            not isinstance(url, str) or not url,
            "an input_image needs an image_url (a data: URL, or an http(s) URL the server allows); "
            "file_id is not supported",
            f"{where}.content[{j}]",
        )
        parts.append(TextPart(type="image_url", image_url=ImageURL(url=str(url), detail=part.get("detail"))))
    return parts


def _text(content: str | list[dict[str, Any]], where: str) -> str:
    if isinstance(content, str):
        return content
    for j, part in enumerate(content):
        reject_if(
            part.get("type") not in _TEXT_PARTS,
            f"content parts of type {part.get('type')!r} are not supported; send text parts",
            f"{where}.content[{j}]",
        )
    return "".join(str(part.get("text", "")) for part in content)


# ---- the response ------------------------------------------------------------------------------


class OutputText(Struct, kw_only=True, tag="output_text", tag_field="type"):
    text: str
    annotations: list[Any] = msgspec.field(default_factory=list)
    logprobs: list[ResponseLogprob] = msgspec.field(default_factory=list)


class MessageItem(Struct, kw_only=True, tag="message", tag_field="type"):
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class FunctionCallItem(Struct, kw_only=True, tag="function_call", tag_field="type"):
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"] = "completed"


class ReasoningText(Struct, kw_only=True, tag="reasoning_text", tag_field="type"):
    text: str


class ReasoningItem(Struct, kw_only=True, tag="reasoning", tag_field="type"):
    """A reasoning template's thinking block (worker/model/reasoning.py)."""

    id: str
    summary: list[Any] = msgspec.field(default_factory=list)
    content: list[ReasoningText]
    status: Literal["in_progress", "completed", "incomplete"] = "completed"


OutputItem = MessageItem | FunctionCallItem | ReasoningItem


class InputTokensDetails(Struct, kw_only=True):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(Struct, kw_only=True):
    reasoning_tokens: int = 0


class ResponseUsage(Struct, kw_only=True):
    input_tokens: int = 0
    input_tokens_details: InputTokensDetails = msgspec.field(default_factory=InputTokensDetails)
    output_tokens: int = 0
    output_tokens_details: OutputTokensDetails = msgspec.field(default_factory=OutputTokensDetails)
    total_tokens: int = 0


class IncompleteDetails(Struct, kw_only=True):
    reason: Literal["max_output_tokens"] = "max_output_tokens"


class ResponseObject(Struct, kw_only=True):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["completed", "incomplete", "in_progress"]
    completed_at: int | None = None
    error: None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool = True
    previous_response_id: None = None
    store: bool = False
    temperature: float | None = None
    top_p: float | None = None
    text: TextConfig = msgspec.field(default_factory=TextConfig)
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice = "auto"
    tools: list[FunctionTool] = msgspec.field(default_factory=list)
    truncation: Literal["disabled"] = "disabled"
    # OpenAI's: the response so far (zero until the end: nothing is generated before it).
    usage: ResponseUsage = msgspec.field(default_factory=ResponseUsage)
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    user: str | UnsetType = UNSET  # a string when given, else absent
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    top_logprobs: int = 0
    background: bool = False
    service_tier: ServiceTier = "default"
    reasoning: Reasoning = msgspec.field(default_factory=Reasoning)
    max_tool_calls: int | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None


def response_id(request_id: str) -> str:
    return f"resp_{request_id}"


def new_item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def response_shell(
    data: CreateResponseRequest, model: str, request_id: str, created: int, defaults: SamplingParams | None
) -> ResponseObject:
    """The response before its output: in progress, the request's settings echoed; temperature and
    top_p the numbers used (the request's, else the model's `default_parameters`, else the engine's)."""
    used = SamplingParams(temperature=data.temperature, top_p=data.top_p).merged_over(
        defaults.merged_over(ENGINE_DEFAULTS) if defaults is not None else ENGINE_DEFAULTS
    )
    return ResponseObject(
        id=response_id(request_id),
        created_at=created,
        status="in_progress",
        instructions=data.instructions,
        max_output_tokens=data.max_output_tokens,
        model=model,
        output=[],
        parallel_tool_calls=data.parallel_tool_calls is not False,
        temperature=used.temperature,
        top_p=used.top_p,
        text=data.text or TextConfig(),
        tool_choice=data.tool_choice or "auto",
        tools=data.tools or [],
        metadata=data.metadata or {},
        user=data.user if data.user is not None else UNSET,
        presence_penalty=data.presence_penalty or 0.0,
        frequency_penalty=data.frequency_penalty or 0.0,
        top_logprobs=data.top_logprobs or 0,
        service_tier="default",
        reasoning=data.reasoning or Reasoning(),
        max_tool_calls=data.max_tool_calls,
        safety_identifier=data.safety_identifier,
        prompt_cache_key=data.prompt_cache_key,
    )


def output_items(
    result: GenerateResult,
    message_id: str | None = None,
    reasoning_id: str | None = None,
    *,
    reasoning_first: bool = True,
) -> list[OutputItem]:
    """The result's thinking (first, as OpenAI's; last where a stream's message came before it), its
    message (when it has text, or nothing else) and its function calls."""
    items: list[OutputItem] = []
    if result.text or not result.tool_calls:
        text = OutputText(text=result.text, logprobs=response_logprobs(result.logprobs or []))
        items.append(MessageItem(id=message_id or new_item_id("msg"), status="completed", content=[text]))
    for call in result.tool_calls or []:
        arguments = call.function.arguments
        text_args = arguments if isinstance(arguments, str) else msgspec.json.encode(arguments).decode()
        items.append(
            FunctionCallItem(
                id=new_item_id("fc"), call_id=call.id, name=call.function.name, arguments=text_args
            )
        )
    if result.reasoning is not None:
        thought = [ReasoningText(text=result.reasoning)]
        thinking = ReasoningItem(id=reasoning_id or new_item_id("rs"), content=thought)
        items.insert(0 if reasoning_first else len(items), thinking)
    return items


def finished(shell: ResponseObject, result: GenerateResult, output: list[OutputItem]) -> ResponseObject:
    """The shell completed (or incomplete: cut at max_output_tokens) with `output` and usage."""
    cut = result.finish_reason == "length"
    usage = ResponseUsage(
        input_tokens=result.prompt_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=result.cached_tokens),
        output_tokens=result.completion_tokens,
        output_tokens_details=OutputTokensDetails(reasoning_tokens=result.reasoning_tokens),
        total_tokens=result.prompt_tokens + result.completion_tokens,
    )
    return msgspec.structs.replace(
        shell,
        status="incomplete" if cut else "completed",
        completed_at=None if cut else now(),
        incomplete_details=IncompleteDetails() if cut else None,
        output=output,
        usage=usage,
    )
