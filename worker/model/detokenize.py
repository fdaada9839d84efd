"""Incremental detokenization: token ids in, text deltas out.

Decoding one token at a time is wrong (byte-level tokens split UTF-8 characters; SentencePiece
drops a leading space at the start of a decode) and re-decoding the whole sequence per token is
quadratic. Fast tokenizers get `tokenizers.decoders.DecodeStream` (the Rust library's own
incremental decoder, 2-15x cheaper per token than two Python-side decodes here). Slow tokenizers
get the same method by hand, like vLLM and TGI: decode a short window twice, from `prefix_offset`
to `read_offset` (text already sent) and from `prefix_offset` to the end; the difference is the
new text. Both decodes start at the same token, so whatever the decoder does at a window's start
cancels out. Either way a delta is held back while it ends with U+FFFD (an incomplete character).
"""

from __future__ import annotations

import logging
from typing import Any

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

logger = logging.getLogger(__name__)

_REPLACEMENT = "\ufffd"


class Detokenizer:
    """Feed generated token ids one by one; the deltas (then `finish()`) concatenate to
    `tokenizer.decode(all_ids, skip_special_tokens=True)`."""

    def __init__(self, tokenizer: Any, *, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._ids: list[int] = []
        self._sent: list[str] = []

    @property
    def ids(self) -> list[int]:
        return self._ids

    def feed(self, token_id: int) -> str:
        """The text that `token_id` completes; "" while a character is still incomplete."""
        self._ids.append(token_id)
        delta = self._step(token_id)
        if delta:
            self._sent.append(delta)
        return delta

    def finish(self) -> str:
        """What is still held back (a sequence that ends inside a character), from one full decode."""
        full = self._decode(self._ids)
        sent = "".join(self._sent)
        if not full.startswith(sent):
            # Only a decoder whose output at a token depends on tokens far after it gets here.
            logger.warning("incremental decode diverged from the full decode; dropping the tail")
            return ""
        rest = full[len(sent) :]
        if rest:
            self._sent.append(rest)
        return rest

    def _step(self, token_id: int) -> str:
        raise NotImplementedError

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        text: str = self._tokenizer.decode(ids, skip_special_tokens=self._skip_special)
        return text


class StreamDetokenizer(Detokenizer):
    """A fast tokenizer's deltas from `tokenizers`' DecodeStream."""

    def __init__(self, tokenizer: Any, backend: Tokenizer, *, skip_special_tokens: bool = True) -> None:
        super().__init__(tokenizer, skip_special_tokens=skip_special_tokens)
        self._backend = backend
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)

    def _step(self, token_id: int) -> str:
        return self._stream.step(self._backend, token_id) or ""


class IncrementalDetokenizer(Detokenizer):
    """The slow-tokenizer fallback: a window decoded twice per token."""

    def __init__(self, tokenizer: Any, *, skip_special_tokens: bool = True) -> None:
        super().__init__(tokenizer, skip_special_tokens=skip_special_tokens)
        self._prefix_offset = 0
        self._read_offset = 0
        self._prefix_text = ""

    def _step(self, token_id: int) -> str:
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) <= len(self._prefix_text) or new_text.endswith(_REPLACEMENT):
            return ""
        delta = new_text[len(self._prefix_text) :]
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        self._prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        return delta


def detokenizer(tokenizer: Any, *, skip_special_tokens: bool = True) -> Detokenizer:
    """DecodeStream for a fast tokenizer (one backed by a `tokenizers.Tokenizer`), else the fallback."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if isinstance(backend, Tokenizer):
        return StreamDetokenizer(tokenizer, backend, skip_special_tokens=skip_special_tokens)
    return IncrementalDetokenizer(tokenizer, skip_special_tokens=skip_special_tokens)
