"""`/v1/chat/completions`: the request as clients send it, the response and its stream chunks.

Streams are driven by `ChoiceEvent`s, `(choice index, text delta | final GenerateResult)`, so that
`n > 1` generations interleave; `chat_stream` turns them into OpenAI's chunk sequence.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

from gateway.schemas.common import (
    ChoiceCount,
    ChoiceEvent,
    KeepAlive,
    MaxTokens,
    OpenAIFinishReason,
    Penalty,
    RepetitionPenalty,
    Seed,
    Stop,
    StreamOptions,
    Temperature,
    TopK,
    TopLogprobs,
    TopP,
    Usage,
    now,
    openai_finish_reason,
    per_choice_params,
    reject_if,
    stop_list,
    top_k_value,
    usage_of,
)
from shared.generation import FinishReason, GenerateResult, Message, SamplingParams


class ChatCompletionRequest(Struct, kw_only=True):
    # Optional, unlike OpenAI: a request naming no model goes to the configured default model.
    model: str | None = None
    messages: Annotated[list[Message], Meta(min_length=1)]
    temperature: Temperature | None = None
    top_p: TopP | None = None
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    stop: Stop = None
    seed: Seed | None = None
    n: ChoiceCount | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Accepted so clients that always send them work; they don't change generation.
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    logprobs: bool | None = None
    top_logprobs: TopLogprobs | None = None
    # vLLM extensions.
    top_k: TopK | None = None
    repetition_penalty: RepetitionPenalty | None = None
    # Ollama's extension: how long the model stays loaded after this request.
    keep_alive: KeepAlive = None
    # Decoded only to refuse them clearly: answering free text instead breaks the client later.
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None

    @property
    def choices(self) -> int:
        return self.n or 1

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def check(self) -> None:
        """Raise a 400 naming the field for what Dukat accepts on the wire but cannot do."""
        reject_if(bool(self.logprobs), "logprobs are not supported", "logprobs")
        reject_if(
            bool(self.tools) and self.tool_choice != "none",
            "tool calling is not supported by Dukat's models; send no tools or tool_choice \"none\"",
            "tools",
        )
        reject_if(
            self.response_format is not None and self.response_format.get("type", "text") != "text",
            "only response_format {\"type\": \"text\"} is supported",
            "response_format",
        )
        for i, message in enumerate(self.messages):
            if isinstance(message.content, list):
                for j, part in enumerate(message.content):
                    reject_if(
                        part.type != "text",
                        f"content parts of type {part.type!r} are not supported; send text parts",
                        f"messages[{i}].content[{j}]",
                    )

    def sampling_params(self) -> SamplingParams:
        """The request's sampling fields (unset ones stay None); checks the request first."""
        self.check()
        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=top_k_value(self.top_k),
            repetition_penalty=self.repetition_penalty,
            max_new_tokens=self.max_completion_tokens or self.max_tokens,
            stop=stop_list(self.stop),
            seed=self.seed,
        )

    def choice_params(self) -> list[SamplingParams]:
        """One SamplingParams per choice; a seed is offset per choice so `n` seeded choices differ."""
        return per_choice_params(self.sampling_params(), self.choices)


class AssistantMessage(Struct, kw_only=True):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None


class ChatChoice(Struct, kw_only=True):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: OpenAIFinishReason


class ChatCompletionResponse(Struct, kw_only=True):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(Struct, kw_only=True, omit_defaults=True):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(Struct, kw_only=True):
    index: int
    delta: ChatDelta
    logprobs: None = None
    finish_reason: OpenAIFinishReason | None = None


class ChatCompletionChunk(Struct, kw_only=True):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    # Absent unless include_usage; then null on every chunk but the last, as OpenAI does.
    usage: Usage | UnsetType | None = UNSET


def chat_id(request_id: str) -> str:
    return f"chatcmpl-{request_id}"


def chat_response(
    results: Sequence[GenerateResult], model: str, request_id: str, created: int | None = None
) -> ChatCompletionResponse:
    """The response for `len(results)` choices of one conversation (n > 1: one result per choice)."""
    choices = [
        ChatChoice(
            index=i,
            message=AssistantMessage(content=r.text),
            finish_reason=openai_finish_reason(r.finish_reason),
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


class ChatChunks:
    """Builds the chunks of one streamed chat completion (same id and `created` on every chunk)."""

    def __init__(
        self, *, model: str, request_id: str, include_usage: bool = False, created: int | None = None
    ) -> None:
        self.model = model
        self.id = chat_id(request_id)
        self.include_usage = include_usage
        self.created = now() if created is None else created

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

    def content(self, text: str, index: int = 0) -> ChatCompletionChunk:
        return self._chunk([ChatChunkChoice(index=index, delta=ChatDelta(content=text))])

    def finish(self, reason: FinishReason, index: int = 0) -> ChatCompletionChunk:
        choice = ChatChunkChoice(index=index, delta=ChatDelta(), finish_reason=openai_finish_reason(reason))
        return self._chunk([choice])

    def usage(self, results: Sequence[GenerateResult]) -> ChatCompletionChunk:
        """The extra last chunk of an include_usage stream: no choices, the whole request's usage."""
        return self._chunk([], usage=usage_of(results, n=len(results) or 1))


async def chat_stream(
    events: AsyncIterable[ChoiceEvent], chunks: ChatChunks
) -> AsyncIterator[ChatCompletionChunk | tuple[ChatCompletionChunk, ...]]:
    """OpenAI's chunk sequence for interleaved choice events.

    A choice's role chunk goes out at its first event, not before: a request failing before any
    event then fails as a plain HTTP error rather than inside a started stream.
    """
    results: dict[int, GenerateResult] = {}
    started: set[int] = set()
    async for index, event in events:
        # A choice's role chunk rides with its first event: one write, not two.
        head: tuple[ChatCompletionChunk, ...] = ()
        if index not in started:
            started.add(index)
            head = (chunks.role(index),)
        if isinstance(event, GenerateResult):
            results[index] = event
            yield (*head, chunks.finish(event.finish_reason, index))
        elif event:
            yield (*head, chunks.content(event, index))
        elif head:
            yield head
    if chunks.include_usage:
        yield chunks.usage([results[i] for i in sorted(results)])
