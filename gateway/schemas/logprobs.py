"""Logprobs in OpenAI's two shapes: chat's `{"content": [{token, logprob, bytes, top_logprobs}]}` and
completions' parallel lists `{tokens, token_logprobs, top_logprobs, text_offset}`."""

from __future__ import annotations

from collections.abc import Sequence

from msgspec import Struct

from shared.generation import TokenLogprob


# `bytes` as tuples: a tuple of ints leaves the GC's lists at its first collection, a list never does
# (a long answer holds millions of them; gateway/off_loop.py).
class ChatTopLogprob(Struct, kw_only=True):
    token: str
    logprob: float
    bytes: tuple[int, ...] | None


class ChatTokenLogprob(Struct, kw_only=True):
    token: str
    logprob: float
    bytes: tuple[int, ...] | None
    top_logprobs: list[ChatTopLogprob]


class ChatLogprobs(Struct, kw_only=True):
    content: list[ChatTokenLogprob] | None
    refusal: None = None


class ResponseTopLogprob(Struct, kw_only=True):
    token: str
    logprob: float
    bytes: tuple[int, ...]


class ResponseLogprob(Struct, kw_only=True):
    """The Responses API's entry (an output_text's `logprobs`): chat's, with bytes always a list."""

    token: str
    logprob: float
    bytes: tuple[int, ...]
    top_logprobs: list[ResponseTopLogprob]


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
                bytes=tuple(t.bytes),
                top_logprobs=[
                    ChatTopLogprob(token=a.token, logprob=a.logprob, bytes=tuple(a.bytes)) for a in t.top
                ],
            )
            for t in items
        ]
    )


def response_logprobs(items: Sequence[TokenLogprob]) -> list[ResponseLogprob]:
    return [
        ResponseLogprob(
            token=t.token,
            logprob=t.logprob if t.logprob is not None else 0.0,
            bytes=tuple(t.bytes),
            top_logprobs=[
                ResponseTopLogprob(token=a.token, logprob=a.logprob, bytes=tuple(a.bytes)) for a in t.top
            ],
        )
        for t in items
    ]


def completion_logprobs(items: Sequence[TokenLogprob], *, offset: int = 0) -> CompletionLogprobs:
    """`items` (an echoed prompt's first: logprob None, top None) with text offsets from `offset`.
    Each `top_logprobs` entry holds the chosen token too, as OpenAI's does (up to `logprobs` + 1)."""
    offsets, at = [], offset
    for t in items:
        offsets.append(at)
        at += len(t.token)
    return CompletionLogprobs(
        tokens=[t.token for t in items],
        token_logprobs=[t.logprob for t in items],
        top_logprobs=[None if t.logprob is None else _top_with_sampled(t) for t in items],
        text_offset=offsets,
    )


def _top_with_sampled(item: TokenLogprob) -> dict[str, float]:
    top = {a.token: a.logprob for a in item.top}
    if item.logprob is not None:
        top.setdefault(item.token, item.logprob)
    return top
