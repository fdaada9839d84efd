"""`/v1/chat/completions`: the request as clients send it, the response and its stream chunks.

Streams are driven by `ChoiceEvent`s, `(choice index, streamed piece | final GenerateResult)`, so
that `n > 1` generations interleave; `ChatChunks.stream` turns them into OpenAI's chunk sequence:
text with its tokens' logprobs, a tool call's arguments as the model writes them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from gateway.schemas.common import (
    Chunks,
    Envelope,
    MaxTokens,
    OpenAIFinishReason,
    TopLogprobs,
    Usage,
    keep_alive_seconds,
    now,
    openai_finish_reason,
    reject_if,
    usage_of,
)
from gateway.schemas.logprobs import ChatLogprobs, chat_logprobs
from gateway.schemas.sampling import SamplingRequest
from gateway.schemas.tools import (
    FunctionCallChoice,
    FunctionDef,
    ResponseFormat,
    Tool,
    ToolChoice,
    legacy_tools,
    tool_plan,
)
from shared.generation import (
    CallDelta,
    FinishReason,
    FunctionCall,
    GenerateRequest,
    GenerateResult,
    Message,
    Reasoning,
    SamplingParams,
    StreamItem,
    TextWithLogprobs,
    ToolCall,
)
from shared.settings import Settings


class ChatCompletionRequest(SamplingRequest, kw_only=True):
    messages: Annotated[list[Message], Meta(min_length=1)]
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    logprobs: bool | None = None
    top_logprobs: TopLogprobs | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # The legacy functions API, mapped onto tools.
    functions: list[FunctionDef] | None = None
    function_call: FunctionCallChoice | None = None
    response_format: ResponseFormat | None = None
    # OpenAI's fields for what a text model here can't do: declared so that asking is a 400, not ignored.
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    # vLLM's: variables for the chat template (e.g. {"enable_thinking": false}); OpenAI's
    # reasoning_effort reaches templates that read it (gpt-oss).
    chat_template_kwargs: dict[str, Any] | None = None
    reasoning_effort: str | None = None

    @property
    def legacy_functions(self) -> bool:
        return bool(self.functions) and not self.tools

    @classmethod
    def refine_json_schema(cls, schema: dict[str, Any], settings: Settings) -> None:
        super().refine_json_schema(schema, settings)
        # top_logprobs only with logprobs: true (check() refuses the rest).
        schema["anyOf"] = [
            {"properties": {"logprobs": {"const": True}}, "required": ["logprobs"]},
            {"properties": {"top_logprobs": {"anyOf": [{"type": "null"}, {"const": 0}]}}},
        ]
        # tool_choice only with tools; no modality but text, no audio, no web search (check()).
        schema.setdefault("allOf", []).append({"anyOf": [
            {"properties": {"tool_choice": {"type": "null"}}},
            {"properties": {"tools": {"type": "array", "minItems": 1}}, "required": ["tools"]},
        ]})
        props = schema["properties"]
        props["modalities"] = {"anyOf": [{"type": "array", "items": {"const": "text"}}, {"type": "null"}]}
        props["audio"] = props["web_search_options"] = {"type": "null", "default": None}

    def check(self) -> None:
        """Raise a 400 naming the field for what Dukat accepts on the wire but cannot do."""
        self.check_streaming()
        text_only = all(m == "text" for m in self.modalities or ())
        reject_if(not text_only, "only the text modality is supported", "modalities")
        reject_if(self.audio is not None, "audio output is not supported", "audio")
        reject_if(
            self.web_search_options is not None, "web search is not supported", "web_search_options"
        )
        # OpenAI: "'tool_choice' is only allowed when 'tools' are specified", whatever its value.
        reject_if(
            self.tool_choice is not None and not self.tools,
            "tool_choice is only allowed when tools are given",
            "tool_choice",
        )
        reject_if(
            self.top_logprobs is not None and self.top_logprobs > 0 and not self.logprobs,
            "top_logprobs needs logprobs: true",
            "top_logprobs",
        )
        for i, message in enumerate(self.messages):
            if isinstance(message.content, list):
                for j, part in enumerate(message.content):
                    reject_if(
                        part.type not in ("text", "image_url"),
                        f"content parts of type {part.type!r} are not supported; send text or image_url "
                        "parts",
                        f"messages[{i}].content[{j}]",
                    )
                    reject_if(
                        part.type == "image_url" and part.image_url is None,
                        "an image_url part needs image_url.url",
                        f"messages[{i}].content[{j}]",
                    )

    def template_kwargs(self) -> dict[str, Any] | None:
        effort = {"reasoning_effort": self.reasoning_effort} if self.reasoning_effort else {}
        merged = {**effort, **(self.chat_template_kwargs or {})}
        return merged or None

    def sampling_params(self) -> SamplingParams:
        """The request's sampling fields (unset ones stay None); checks the request first."""
        self.check()
        return self.base_params(self.max_completion_tokens or self.max_tokens)

    def generate_requests(self, request_id: str) -> list[GenerateRequest]:
        """One GenerateRequest per choice: the messages, the tools and constraint, logprobs."""
        if self.legacy_functions:
            tools, choice = legacy_tools(self.functions, self.function_call)
        else:
            tools, choice = self.tools, self.tool_choice
        use, forced = tool_plan(tools, choice, self.parallel_tool_calls)
        formatted = self.response_format.constraint() if self.response_format is not None else None
        constraint = forced or formatted or self.extension_constraint()
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        keep_alive = keep_alive_seconds(self.keep_alive)
        return [
            GenerateRequest(
                messages=self.messages,
                params=p,
                request_id=request_id,
                keep_alive=keep_alive,
                tools=use,
                constraint=constraint,
                logprobs=logprobs,
                template_kwargs=self.template_kwargs(),
            )
            for p in self.choice_params()
        ]


class AssistantMessage(Struct, kw_only=True):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCall] | UnsetType = UNSET
    function_call: FunctionCall | UnsetType = UNSET
    # A reasoning template's thinking block (vLLM's `reasoning_content`, and its newer `reasoning`).
    reasoning_content: str | UnsetType = UNSET
    reasoning: str | UnsetType = UNSET


def assistant_message(result: GenerateResult, *, legacy: bool = False) -> AssistantMessage:
    calls = result.tool_calls
    thinking = result.reasoning if result.reasoning is not None else UNSET
    if not calls:
        return AssistantMessage(content=result.text, reasoning_content=thinking, reasoning=thinking)
    content = result.text or None
    if legacy:
        return AssistantMessage(
            content=content, function_call=calls[0].function, reasoning_content=thinking, reasoning=thinking
        )
    return AssistantMessage(content=content, tool_calls=calls, reasoning_content=thinking, reasoning=thinking)


def finish_reason_of(result: GenerateResult, *, legacy: bool = False) -> OpenAIFinishReason:
    if result.tool_calls:
        return "function_call" if legacy else "tool_calls"
    return openai_finish_reason(result.finish_reason)


class ChatChoice(Struct, kw_only=True):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: OpenAIFinishReason


class ChatCompletionResponse(Envelope, kw_only=True):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class DeltaFunction(Struct, kw_only=True, omit_defaults=True):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(Struct, kw_only=True, omit_defaults=True):
    """A tool call's piece: the first has `id`, `type` and the name; later ones argument text."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunction | None = None


class ChatDelta(Struct, kw_only=True, omit_defaults=True):
    role: Literal["assistant"] | None = None
    content: str | None = None
    # The thinking block, under vLLM's older and newer names.
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[DeltaToolCall] | None = None
    function_call: DeltaFunction | None = None


class ChatChunkChoice(Struct, kw_only=True):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: OpenAIFinishReason | None = None


class ChatCompletionChunk(Envelope, kw_only=True):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    # Absent unless include_usage; then null on every chunk but the last, as OpenAI does.
    usage: Usage | UnsetType | None = UNSET


def chat_id(request_id: str) -> str:
    return f"chatcmpl-{request_id}"


def chat_response(
    results: Sequence[GenerateResult],
    model: str,
    request_id: str,
    created: int | None = None,
    *,
    legacy: bool = False,
) -> ChatCompletionResponse:
    """The response for `len(results)` choices of one conversation (n > 1: one result per choice)."""
    choices = [
        ChatChoice(
            index=i,
            message=assistant_message(r, legacy=legacy),
            logprobs=None if r.logprobs is None else chat_logprobs(r.logprobs),
            finish_reason=finish_reason_of(r, legacy=legacy),
        )
        for i, r in enumerate(results)
    ]
    return ChatCompletionResponse(
        id=chat_id(request_id),
        created=now() if created is None else created,
        model=model,
        choices=choices,
        usage=usage_of(results, n=len(results) or 1),
    )


@dataclasses.dataclass(kw_only=True)
class ChatChunks(Chunks[ChatCompletionChunk]):
    """Builds the chunks of one streamed chat completion.

    A choice's role chunk goes out with its first event, not before: a request failing before any
    event then fails as a plain HTTP error rather than inside a started stream.
    """

    legacy: bool = False

    @property
    def id(self) -> str:
        return chat_id(self.request_id)

    def of_event(self, index: int, event: StreamItem, *, first: bool) -> tuple[ChatCompletionChunk, ...]:
        head = (self.role(index),) if first else ()
        match event:
            case GenerateResult():
                return (*head, *self.ending(event, index))
            case Reasoning():
                return (*head, self.thinking(event.text, index)) if event.text else head
            case TextWithLogprobs():
                self.sent_logprobs(index, event.logprobs)
                return (*head, self.content(event.text, index, chat_logprobs(event.logprobs)))
            case CallDelta():
                return (*head, *self.call_piece(event, index))
        return (*head, self.content(event, index)) if event else head

    def _chunk(self, choices: list[ChatChunkChoice], usage: Usage | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=choices,
            usage=usage if self.include_usage else UNSET,
        )

    def role(self, index: int = 0) -> ChatCompletionChunk:
        """A choice's first chunk: the assistant role with empty content, as OpenAI sends it."""
        return self._chunk([ChatChunkChoice(index=index, delta=ChatDelta(role="assistant", content=""))])

    def thinking(self, text: str, index: int = 0) -> ChatCompletionChunk:
        delta = ChatDelta(reasoning_content=text, reasoning=text)
        return self._chunk([ChatChunkChoice(index=index, delta=delta)])

    def content(self, text: str, index: int = 0, logprobs: ChatLogprobs | None = None) -> ChatCompletionChunk:
        return self._chunk([ChatChunkChoice(index=index, delta=ChatDelta(content=text), logprobs=logprobs)])

    def call_piece(self, piece: CallDelta, index: int = 0) -> tuple[ChatCompletionChunk, ...]:
        """A tool call's first piece (id, type, name) or more of its arguments."""
        if self.legacy and piece.index > 0:
            return ()  # the functions API has one call
        if piece.id is not None:
            self.calls_sent.setdefault(index, set()).add(piece.index)
        if self.legacy:
            delta = ChatDelta(function_call=DeltaFunction(name=piece.name, arguments=piece.arguments))
        else:
            function = DeltaFunction(name=piece.name, arguments=piece.arguments)
            kind: Literal["function"] | None = "function" if piece.id is not None else None
            delta = ChatDelta(
                tool_calls=[DeltaToolCall(index=piece.index, id=piece.id, type=kind, function=function)]
            )
        return (self._chunk([ChatChunkChoice(index=index, delta=delta)]),)

    def finish(self, reason: FinishReason | GenerateResult, index: int = 0) -> ChatCompletionChunk:
        if isinstance(reason, GenerateResult):
            finish = finish_reason_of(reason, legacy=self.legacy)
        else:
            finish = openai_finish_reason(reason)
        return self._chunk([ChatChunkChoice(index=index, delta=ChatDelta(), finish_reason=finish)])

    def ending(self, result: GenerateResult, index: int = 0) -> tuple[ChatCompletionChunk, ...]:
        """A choice's last chunks: the logprobs of tokens that sent no text (a stop sequence, a tool
        call), the tool calls not streamed, its finish reason."""
        out = []
        sent = self.logprobs_sent.get(index, 0)
        if result.logprobs is not None and (result.logprobs[sent:] or not sent):
            logprobs = chat_logprobs(result.logprobs[sent:])
            out.append(
                self._chunk([ChatChunkChoice(index=index, delta=ChatDelta(content=""), logprobs=logprobs)])
            )
        calls = result.tool_calls or []
        announced = self.calls_sent.get(index, set())
        for i, call in enumerate(calls[:1] if self.legacy else calls):
            if i not in announced:
                out += [
                    self._chunk([ChatChunkChoice(index=index, delta=d)]) for d in self._call_deltas(i, call)
                ]
        return (*out, self.finish(result, index))

    def _call_deltas(self, i: int, call: ToolCall) -> list[ChatDelta]:
        args = call.function.arguments
        text = args if isinstance(args, str) else msgspec.json.encode(args).decode()
        if self.legacy:
            return [ChatDelta(function_call=DeltaFunction(name=call.function.name, arguments=text))]
        first = DeltaToolCall(
            index=i,
            id=call.id,
            type="function",
            function=DeltaFunction(name=call.function.name, arguments=""),
        )
        rest = DeltaToolCall(index=i, function=DeltaFunction(arguments=text))
        return [ChatDelta(tool_calls=[first]), ChatDelta(tool_calls=[rest])]

    def usage(self, results: Sequence[GenerateResult]) -> ChatCompletionChunk:
        return self._chunk([], usage=usage_of(results, n=len(results) or 1))
