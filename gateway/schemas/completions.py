"""`/v1/completions` (legacy text completions): request, response and stream chunks.

Choices are ordered prompt-major as OpenAI orders them: prompt `p`, sample `j` is choice `p * n + j`.
A stream chunk has the response's own shape (OpenAI's schema has no separate chunk type).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import Literal

from msgspec import UNSET, Struct, UnsetType

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
from shared.generation import GenerateResult, SamplingParams

# OpenAI's default for this endpoint (the chat endpoint has none).
DEFAULT_MAX_TOKENS = 16


class CompletionRequest(Struct, kw_only=True):
    # Optional, unlike OpenAI: a request naming no model goes to the configured default model.
    model: str | None = None
    # Token-id prompts decode (so the 400 can say why) but are refused.
    prompt: str | list[str | int | list[int]]
    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: ChoiceCount | None = None
    best_of: ChoiceCount | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: Stop = None
    seed: Seed | None = None
    echo: bool | None = None
    suffix: str | None = None
    logprobs: int | None = None
    user: str | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    # vLLM extensions.
    top_k: TopK | None = None
    repetition_penalty: RepetitionPenalty | None = None
    # Ollama's extension: how long the model stays loaded after this request.
    keep_alive: KeepAlive = None

    @property
    def choices(self) -> int:
        """Samples per prompt."""
        return self.n or 1

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def prompts(self) -> list[str]:
        """The prompts as strings; a 400 for token-id prompts or an empty list."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        reject_if(not self.prompt, "prompt must not be an empty list", "prompt")
        texts = [p for p in self.prompt if isinstance(p, str)]
        reject_if(
            len(texts) != len(self.prompt),
            "token-id prompts are not supported; send the prompt as text",
            "prompt",
        )
        return texts

    def check(self) -> None:
        reject_if(bool(self.suffix), "suffix is not supported", "suffix")
        reject_if(self.logprobs is not None, "logprobs are not supported", "logprobs")
        reject_if(
            self.best_of is not None and self.best_of != self.choices,
            "best_of other than n is not supported",
            "best_of",
        )
        self.prompts()

    def sampling_params(self) -> SamplingParams:
        """The request's sampling fields, `max_tokens` defaulting to OpenAI's 16; checks first."""
        self.check()
        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=top_k_value(self.top_k),
            repetition_penalty=self.repetition_penalty,
            max_new_tokens=self.max_tokens or DEFAULT_MAX_TOKENS,
            stop=stop_list(self.stop),
            seed=self.seed,
        )

    def choice_params(self) -> list[SamplingParams]:
        """One SamplingParams per sample of a prompt; seeds offset per sample so they differ."""
        return per_choice_params(self.sampling_params(), self.choices)


class CompletionChoice(Struct, kw_only=True):
    index: int
    text: str
    logprobs: None = None
    # Null only on stream chunks before a choice ends.
    finish_reason: OpenAIFinishReason | None = None


class CompletionResponse(Struct, kw_only=True):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    # Always set on a response; on stream chunks only on the include_usage last chunk.
    usage: Usage | UnsetType = UNSET


def completion_id(request_id: str) -> str:
    return f"cmpl-{request_id}"


def completion_response(
    results: Sequence[GenerateResult],
    model: str,
    request_id: str,
    *,
    n: int = 1,
    echo_prompts: Sequence[str] | None = None,
    created: int | None = None,
) -> CompletionResponse:
    """The response for `len(results)` choices, `n` per prompt; with `echo_prompts`, each text is
    preceded by its prompt."""
    choices = [
        CompletionChoice(
            index=i,
            text=(echo_prompts[i // n] if echo_prompts else "") + r.text,
            finish_reason=openai_finish_reason(r.finish_reason),
        )
        for i, r in enumerate(results)
    ]
    return CompletionResponse(
        id=completion_id(request_id),
        created=now() if created is None else created,
        model=model,
        choices=choices,
        usage=usage_of(results, n=n),
    )


class CompletionChunks:
    """Builds the chunks of one streamed completion (same id and `created` on every chunk)."""

    def __init__(
        self, *, model: str, request_id: str, include_usage: bool = False, created: int | None = None
    ) -> None:
        self.model = model
        self.id = completion_id(request_id)
        self.include_usage = include_usage
        self.created = now() if created is None else created

    def _chunk(self, choices: list[CompletionChoice], usage: Usage | UnsetType = UNSET) -> CompletionResponse:
        return CompletionResponse(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=usage
        )

    def text(self, text: str, index: int = 0) -> CompletionResponse:
        return self._chunk([CompletionChoice(index=index, text=text)])

    def finish(self, result: GenerateResult, index: int = 0) -> CompletionResponse:
        reason = openai_finish_reason(result.finish_reason)
        return self._chunk([CompletionChoice(index=index, text="", finish_reason=reason)])

    def usage(self, results: Sequence[GenerateResult], n: int = 1) -> CompletionResponse:
        return self._chunk([], usage=usage_of(results, n=n))


async def completion_stream(
    events: AsyncIterable[ChoiceEvent],
    chunks: CompletionChunks,
    *,
    n: int = 1,
    echo_prompts: Sequence[str] | None = None,
) -> AsyncIterator[CompletionResponse]:
    """OpenAI's chunk sequence for interleaved choice events (index `p * n + j`); with
    `echo_prompts`, a choice's first chunk is its prompt."""
    results: dict[int, GenerateResult] = {}
    started: set[int] = set()
    async for index, event in events:
        if echo_prompts and index not in started:
            yield chunks.text(echo_prompts[index // n], index)
        started.add(index)
        if isinstance(event, GenerateResult):
            results[index] = event
            yield chunks.finish(event, index)
        elif event:
            yield chunks.text(event, index)
    if chunks.include_usage:
        yield chunks.usage([results[i] for i in sorted(results)], n=n)
