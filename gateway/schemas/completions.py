"""`/v1/completions` (legacy text completions): request, response and stream chunks.

Choices are ordered prompt-major as OpenAI orders them: prompt `p`, sample `j` is choice `p * n + j`.
A stream chunk has the response's own shape (OpenAI's schema has no separate chunk type).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

from gateway.schemas.common import (
    INT64_MAX,
    Chunks,
    Envelope,
    OpenAIFinishReason,
    TokenId,
    Usage,
    keep_alive_seconds,
    now,
    openai_finish_reason,
    reject_if,
    usage_of,
)
from gateway.schemas.json_schema import bound, text_input, token_ids_input
from gateway.schemas.logprobs import CompletionLogprobs, completion_logprobs
from gateway.schemas.sampling import SamplingRequest
from shared.generation import (
    CallDelta,
    GenerateRequest,
    GenerateResult,
    Reasoning,
    SamplingParams,
    StreamItem,
    TextWithLogprobs,
    TokenLogprob,
)
from shared.settings import Settings

# OpenAI's default for this endpoint (the chat endpoint has none).
DEFAULT_MAX_TOKENS = 16
# 0 generates nothing: with echo and logprobs, a request scores its prompt (lm-eval's loglikelihood).
CompletionMaxTokens = Annotated[int, Meta(ge=0, le=INT64_MAX)]
CompletionLogprobCount = Annotated[int, Meta(ge=0, le=5)]
Prompt = str | int | list[TokenId]


class CompletionRequest(SamplingRequest, kw_only=True):
    # Text, a list of texts, token ids, or a list of token-id lists.
    prompt: str | list[Prompt]
    max_tokens: CompletionMaxTokens | None = None
    best_of: Annotated[int, Meta(ge=1, le=128)] | None = None
    echo: bool | None = None
    suffix: str | None = None
    logprobs: CompletionLogprobCount | None = None

    @classmethod
    def refine_json_schema(cls, schema: dict[str, Any], settings: Settings) -> None:
        super().refine_json_schema(schema, settings)
        bound(schema, "best_of", "integer", maximum=min(128, settings.max_generations))
        # Texts or token ids (one list, or a list of lists), never mixed; no empty list (prompts()).
        text, ids = text_input(settings), token_ids_input(settings)
        prompts = {"type": "array", "minItems": 1, "maxItems": settings.max_generations, "items": text}
        many_ids = {"type": "array", "minItems": 1, "maxItems": settings.max_generations, "items": ids}
        schema["properties"]["prompt"] = {"anyOf": [text, prompts, ids, many_ids]}
        empty = {"type": "string", "maxLength": 0}  # a suffix is refused (check()); "" is no suffix
        schema["properties"]["suffix"] = {"anyOf": [empty, {"type": "null"}], "default": None}

    def prompts(self) -> list[str | list[int]]:
        """The prompts, each a text or token ids; a 400 for an empty or mixed list."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        reject_if(not self.prompt, "prompt must not be an empty list", "prompt")
        if all(isinstance(p, int) for p in self.prompt):
            return [[p for p in self.prompt if isinstance(p, int)]]
        reject_if(
            any(isinstance(p, int) for p in self.prompt),
            "prompt mixes token ids and texts; send a list of texts or a list of token-id lists",
            "prompt",
        )
        reject_if(any(p == [] for p in self.prompt), "a token-id prompt must not be empty", "prompt")
        return [p for p in self.prompt if not isinstance(p, int)]

    def check(self) -> None:
        reject_if(bool(self.suffix), "suffix is not supported", "suffix")
        reject_if(
            self.best_of is not None and self.best_of != self.choices,
            "best_of other than n is not supported",
            "best_of",
        )
        prompts = self.prompts()
        reject_if(
            bool(self.stream and self.echo) and any(not isinstance(p, str) for p in prompts),
            "echo of token-id prompts is not supported in a stream; send stream: false",
            "echo",
        )

    def sampling_params(self) -> SamplingParams:
        """The request's sampling fields, `max_tokens` defaulting to OpenAI's 16; checks first."""
        self.check_streaming()
        self.check()
        return self.base_params(DEFAULT_MAX_TOKENS if self.max_tokens is None else self.max_tokens)

    def generate_requests(self, request_id: str) -> list[GenerateRequest]:
        """Prompt-major, `n` samples per prompt: choice index = prompt * n + sample."""
        params, constraint = self.choice_params(), self.extension_constraint()
        keep_alive = keep_alive_seconds(self.keep_alive)
        return [
            GenerateRequest(
                prompt=p if isinstance(p, str) else None,
                prompt_ids=None if isinstance(p, str) else p,
                params=s,
                request_id=request_id,
                keep_alive=keep_alive,
                constraint=constraint,
                logprobs=self.logprobs,
                echo=bool(self.echo),
            )
            for p in self.prompts()
            for s in params
        ]


class CompletionChoice(Struct, kw_only=True):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    # Null only on stream chunks before a choice ends.
    finish_reason: OpenAIFinishReason | None = None


class CompletionResponse(Envelope, kw_only=True):
    object: Literal["text_completion"] = "text_completion"
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
    created: int | None = None,
) -> CompletionResponse:
    """The response for `len(results)` choices, `n` per prompt; an echoed prompt (the worker's
    `prompt_text`) precedes its text, and its tokens its logprobs."""
    choices = [
        CompletionChoice(
            index=i,
            text=(r.prompt_text or "") + r.text,
            logprobs=_logprobs(r),
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


@dataclasses.dataclass(kw_only=True)
class CompletionChunks(Chunks[CompletionResponse]):
    """Builds the chunks of one streamed completion: `n` choices per prompt (choice `p * n + j`); with
    `echo_prompts`, a choice's first chunk is its prompt."""

    n: int = 1
    echo_prompts: Sequence[str] | None = None
    text_offsets: dict[int, int] = dataclasses.field(default_factory=dict)  # per choice, of its next token

    @property
    def id(self) -> str:
        return completion_id(self.request_id)

    def of_event(self, index: int, event: StreamItem, *, first: bool) -> tuple[CompletionResponse, ...]:
        echo = self.echo_prompts
        head = (self.text(echo[index // self.n], index),) if first and echo else ()
        match event:
            case GenerateResult():
                return (*head, self.finish(event, index))
            case Reasoning() | CallDelta():  # raw completions are never split; the seed API's may be
                return head
            case TextWithLogprobs() if not echo:  # an echoed prompt's logprobs come with the result
                return (*head, self.text(event.text, index, self._logprobs_of(index, event.logprobs)))
            case TextWithLogprobs():
                return (*head, self.text(event.text, index))
        return (*head, self.text(event, index)) if event else head

    def _chunk(self, choices: list[CompletionChoice], usage: Usage | UnsetType = UNSET) -> CompletionResponse:
        return CompletionResponse(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=usage
        )

    def text(
        self, text: str, index: int = 0, logprobs: CompletionLogprobs | None = None
    ) -> CompletionResponse:
        return self._chunk([CompletionChoice(index=index, text=text, logprobs=logprobs)])

    def _logprobs_of(self, index: int, items: Sequence[TokenLogprob]) -> CompletionLogprobs:
        """`items` with their text offsets in the choice's whole text."""
        offset = self.text_offsets.get(index, 0)
        self.text_offsets[index] = offset + sum(len(t.token) for t in items)
        self.sent_logprobs(index, items)
        return completion_logprobs(items, offset=offset)

    def finish(self, result: GenerateResult, index: int = 0) -> CompletionResponse:
        """A choice's last chunk: its finish reason, and the logprobs not sent with their text."""
        reason = openai_finish_reason(result.finish_reason)
        sent = self.logprobs_sent.get(index, 0)
        logprobs = _logprobs(result)
        if sent and result.logprobs is not None:
            logprobs = self._logprobs_of(index, result.logprobs[sent:])
        return self._chunk([CompletionChoice(index=index, text="", logprobs=logprobs, finish_reason=reason)])

    def usage(self, results: Sequence[GenerateResult]) -> CompletionResponse:
        return self._chunk([], usage=usage_of(results, n=self.n))


def _logprobs(result: GenerateResult) -> CompletionLogprobs | None:
    if result.logprobs is None:
        return None
    return completion_logprobs([*(result.prompt_logprobs or []), *result.logprobs])
