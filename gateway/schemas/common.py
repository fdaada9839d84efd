"""Shapes and ranges shared by the OpenAI endpoint families: sampling fields, usage, ids, finish
reasons, the envelope of a response and its stream chunks, and the stream of chunks itself."""

from __future__ import annotations

import abc
import dataclasses
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import Annotated, Generic, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct

from shared.errors import InvalidRequestError
from shared.generation import FinishReason, GenerateResult, SamplingParams, StreamItem, TokenLogprob
from shared.keep_alive import KEEP_ALIVE_PATTERN, parse_keep_alive

# Ranges as OpenAI documents them; `n` is capped (OpenAI: 128) so one request can't queue thousands.
# Integers that reach the worker stay within int64: its wire (msgpack) can't carry larger ones.
INT64_MAX = 2**63 - 1
Temperature = Annotated[float, Meta(ge=0, le=2)]
TopP = Annotated[float, Meta(gt=0, le=1)]
ChoiceCount = Annotated[int, Meta(ge=1, le=128)]
MaxTokens = Annotated[int, Meta(ge=1, le=INT64_MAX)]
Penalty = Annotated[float, Meta(ge=-2, le=2)]
LogitBias = Annotated[float, Meta(ge=-100, le=100)]
# vLLM's convention: -1 (or 0) disables top-k.
TopK = Annotated[int, Meta(ge=-1, le=INT64_MAX)]
RepetitionPenalty = Annotated[float, Meta(gt=0)]
TopLogprobs = Annotated[int, Meta(ge=0, le=20)]
# OpenAI's int64; the worker takes it modulo 2**64, so the offsets of n choices can't overflow the wire.
Seed = Annotated[int, Meta(ge=-INT64_MAX - 1, le=INT64_MAX)]
# Out-of-vocabulary ids are the worker's 400; this only keeps them within the wire's range.
TokenId = Annotated[int, Meta(ge=-INT64_MAX - 1, le=INT64_MAX)]
Stop = str | list[str] | None
# Ollama's keep_alive extension: "5m", "1h", seconds, 0 (unload after this request), -1 (forever).
# The pattern only documents the strings parse_keep_alive takes (it decides, with a message).
KeepAlive = Annotated[str, Meta(extra_json_schema={"pattern": KEEP_ALIVE_PATTERN})] | float | None

OpenAIFinishReason = Literal["stop", "length", "tool_calls", "function_call"]

# What a stream of generations yields: (choice index, a streamed piece | the choice's final result).
ChoiceEvent = tuple[int, StreamItem]


class StreamOptions(Struct, kw_only=True):
    include_usage: bool | None = None


class PromptTokensDetails(Struct, kw_only=True):
    cached_tokens: int = 0  # reused from the model worker's prefix cache


class Usage(Struct, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = msgspec.field(default_factory=PromptTokensDetails)


def stop_list(stop: Stop) -> list[str] | None:
    """`stop` as a list without empty strings (an empty stop would end every generation at once)."""
    if stop is None:
        return None
    items = [stop] if isinstance(stop, str) else stop
    return [s for s in items if s]


def keep_alive_seconds(value: KeepAlive) -> float | None:
    """A request's `keep_alive` in seconds (negative: forever); None when it gave none."""
    if value is None:
        return None
    try:
        return parse_keep_alive(value)
    except ValueError as exc:
        raise InvalidRequestError(str(exc), param="keep_alive") from None


def top_k_value(top_k: int | None) -> int | None:
    return None if top_k is None else max(top_k, 0)


def per_choice_params(base: SamplingParams, n: int) -> list[SamplingParams]:
    """`base` for each of `n` choices; a seed is offset per choice so seeded choices differ."""
    if base.seed is None:
        return [base] * n
    return [msgspec.structs.replace(base, seed=base.seed + i) for i in range(n)]


def openai_finish_reason(reason: FinishReason) -> OpenAIFinishReason:
    """OpenAI's enum has no "cancelled": a generation cut short by a cancel ends like a stop sequence."""
    if reason == "length":
        return "length"
    return "tool_calls" if reason == "tool_calls" else "stop"


def usage_of(results: Sequence[GenerateResult], n: int = 1) -> Usage:
    """Usage of `n` generations per prompt, results ordered prompt-major: a prompt counts once."""
    prompt = sum(r.prompt_tokens for r in results[::n])
    completion = sum(r.completion_tokens for r in results)
    details = PromptTokensDetails(cached_tokens=sum(r.cached_tokens for r in results[::n]))
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=details,
    )


def now() -> int:
    return int(time.time())


_TOKEN_ID = re.compile(r"-?[0-9]+")  # as the OpenAPI document's propertyNames says


def logit_bias_ids(bias: dict[str, float] | None) -> dict[int, float] | None:
    """OpenAI's logit_bias (token ids as JSON keys) keyed by int; a key that is no id is a 400."""
    if not bias:
        return None
    for key in bias:
        reject_if(not _TOKEN_ID.fullmatch(key), f"logit_bias keys are token ids; got {key!r}", "logit_bias")
    return {int(key): value for key, value in bias.items()}


def reject_if(condition: bool, message: str, param: str) -> None:
    """Raise a 400 naming `param` when a request asks for something Dukat does not do."""
    if condition:
        raise InvalidRequestError(message, param=param)


class Envelope(Struct, kw_only=True):
    """How a chat or text completion and each of its stream chunks begin; a subclass fixes `object`
    and adds its `choices` and `usage`."""

    id: str
    object: str
    created: int
    model: str


Chunk = TypeVar("Chunk", bound=Envelope)


@dataclasses.dataclass(kw_only=True)
class Chunks(abc.ABC, Generic[Chunk]):
    """The chunks of one streamed completion, all with the same id, `created` and model. `stream`
    turns the choices' interleaved events into them, the chunks of one event in one write, and ends
    with the usage chunk when asked; a subclass says what an event becomes."""

    model: str
    request_id: str
    include_usage: bool = False
    created: int = dataclasses.field(default_factory=now)
    # Per choice: logprob entries sent with their text, indexes of the tool calls announced.
    logprobs_sent: dict[int, int] = dataclasses.field(default_factory=dict)
    calls_sent: dict[int, set[int]] = dataclasses.field(default_factory=dict)

    async def stream(self, events: AsyncIterable[ChoiceEvent]) -> AsyncIterator[tuple[Chunk, ...]]:
        results: dict[int, GenerateResult] = {}
        started: set[int] = set()
        async for index, event in events:
            chunks = self.of_event(index, event, first=index not in started)
            started.add(index)
            if isinstance(event, GenerateResult):
                results[index] = event
            if chunks:
                yield chunks
        if self.include_usage:
            yield (self.usage([results[i] for i in sorted(results)]),)

    def sent_logprobs(self, index: int, items: Sequence[TokenLogprob]) -> None:
        self.logprobs_sent[index] = self.logprobs_sent.get(index, 0) + len(items)

    @abc.abstractmethod
    def of_event(self, index: int, event: StreamItem, *, first: bool) -> tuple[Chunk, ...]:
        """The chunks of choice `index`'s text delta or final result (`first`: its first event)."""

    @abc.abstractmethod
    def usage(self, results: Sequence[GenerateResult]) -> Chunk:
        """The extra last chunk of an include_usage stream: no choices, the whole request's usage."""
