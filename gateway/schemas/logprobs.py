"""Logprobs in OpenAI's two shapes: chat's `{"content": [{token, logprob, bytes, top_logprobs}]}` and
completions' parallel lists `{tokens, token_logprobs, top_logprobs, text_offset}`."""

from __future__ import annotations

from collections.abc import Sequence

from msgspec import Struct

from shared.generation import TokenLogprob


class ChatTopLogprob(Struct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(Struct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[ChatTopLogprob]


class ChatLogprobs(Struct, kw_only=True):
    content: list[ChatTokenLogprob] | None
    refusal: None = None


class CompletionLogprobs(Struct, kw_only=True):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


def chat_logprobs(items: Sequence[TokenLogprob]) -> ChatLogprobs:
    return ChatLogprobs(
        content=[
            ChatTokenLogprob(
                token=t.token,
                logprob=t.logprob if t.logprob is not None else 0.0,
                bytes=t.bytes,
                top_logprobs=[ChatTopLogprob(token=a.token, logprob=a.logprob, bytes=a.bytes) for a in t.top],
            )
            for t in items
        ]
    )


def completion_logprobs(items: Sequence[TokenLogprob], *, offset: int = 0) -> CompletionLogprobs:
    """`items` (an echoed prompt's first: logprob None, top None) with text offsets from `offset`."""
    offsets, at = [], offset
    for t in items:
        offsets.append(at)
        at += len(t.token)
    return CompletionLogprobs(
        tokens=[t.token for t in items],
        token_logprobs=[t.logprob for t in items],
        top_logprobs=[None if t.logprob is None else {a.token: a.logprob for a in t.top} for t in items],
        text_offset=offsets,
    )
