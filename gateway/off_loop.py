"""Work on a request or an answer that grows with its size, off the event loop once it is large.

The loop only waits (ARCHITECTURE.md): turning a 50,000-item Responses input into messages takes a
quarter of a second, and building and encoding a 131 MB answer (n=128 choices with 20 top logprobs a
token) took 1.5 s, which every other client's request would wait for. Small ones stay on the loop,
where a thread hop would cost more than the work.

A thread alone is not enough for the answer: msgspec holds the GIL for a whole `encode` (430 ms for
131 MB), so `encoded_in_pieces` encodes its long lists a slice at a time and the loop gets the GIL
between slices. msgspec has no incremental encoder, hence the splice.
"""

from __future__ import annotations

import asyncio
import gc
import re
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import msgspec
from litestar import Response

from shared.generation import GenerateResult

T = TypeVar("T")

# Items (messages, input items, prompts) from which a request's preparation runs in a thread.
LARGE_ITEMS = 512
# Values in an answer (tokens' logprobs, their alternatives) from which it is built in a thread.
LARGE_ANSWER = 20_000
# Items of a list encoded in one call (a token with 20 alternatives is ~1 KB of JSON).
_SLICE = 256
_pause_lock = threading.Lock()
_pausing = 0  # answers being built with the collector off


async def prepared(items: int, prepare: Callable[[], T]) -> T:
    """`prepare()`, in a thread when the request has `items` >= LARGE_ITEMS."""
    if items < LARGE_ITEMS:
        return prepare()
    return await asyncio.to_thread(prepare)


class EncodedJson(Response[bytes]):
    """An answer `answered` encoded ahead: the route's Struct as its JSON bytes (the OpenAPI document
    shows the Struct)."""


async def answered(results: Sequence[GenerateResult], build: Callable[[], T]) -> T | EncodedJson:
    """`build()`'s answer as the route returns it; when the `results` it is built from hold
    LARGE_ANSWER logprob values or more, built and encoded in a thread, in pieces, and returned as
    JSON bytes. The results' logprobs are spent then: freed in the thread, a result at a time (freed
    at once on the loop, millions of objects held it for 100+ ms)."""
    if logprob_values(results) < LARGE_ANSWER:
        return build()
    body = await asyncio.to_thread(_built_and_encoded, build, results)
    return EncodedJson(body, media_type="application/json")


def _built_and_encoded(build: Callable[[], Any], results: Sequence[GenerateResult]) -> bytes:
    with _collector_paused():
        body = encoded_in_pieces(build())
        for result in results:
            result.logprobs = result.prompt_logprobs = None
        return body


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic GC off while large answers are built: their millions of short-lived objects
    set off full collections, each holding the GIL, so the loop, for up to 119 ms; the objects are
    freed by reference counting once encoded. A count, so overlapping answers switch it on once."""
    global _pausing
    with _pause_lock:
        _pausing += 1
        gc.disable()
    try:
        yield
    finally:
        with _pause_lock:
            _pausing -= 1
            if not _pausing:
                gc.enable()


def encoded_in_pieces(value: Any) -> bytes:
    """`msgspec.json.encode(value)`, each list longer than a slice encoded a slice per call. `value`
    is spent: its long lists are swapped for markers while the rest is encoded."""
    token = uuid.uuid4().hex
    lists: list[list[Any]] = []
    _swap_long_lists(value, token, lists)
    head = msgspec.json.encode(value)
    out = bytearray()
    start = 0
    for marker in re.finditer(rb'"' + token.encode() + rb':(\d+)"', head):
        out += head[start : marker.start()]
        items = lists[int(marker[1])]
        out += b"["
        for i in range(0, len(items), _SLICE):
            piece = items[i : i + _SLICE]
            out += b"," if i else b""
            out += msgspec.json.encode(piece)[1:-1]
            items[i : i + _SLICE] = [None] * len(piece)  # freed a slice at a time too
        out += b"]"
        start = marker.end()
    out += head[start:]
    return bytes(out)


def _swap_long_lists(value: Any, token: str, lists: list[list[Any]]) -> None:
    if isinstance(value, list):
        for item in value:
            _swap_long_lists(item, token, lists)
    elif isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            field = getattr(value, name)
            if isinstance(field, list) and len(field) > _SLICE:
                setattr(value, name, f"{token}:{len(lists)}")
                lists.append(field)
            elif isinstance(field, list | msgspec.Struct):
                _swap_long_lists(field, token, lists)


def logprob_values(results: Sequence[GenerateResult]) -> int:
    """How many values the answer's logprobs hold: each token's and its alternatives' (an echoed
    prompt's too)."""
    total = 0
    for result in results:
        for items in (result.logprobs, result.prompt_logprobs):
            if items:
                # The last entry's: an echoed prompt's first token has no alternatives.
                total += len(items) * (1 + len(items[-1].top))
    return total
