"""Token logprobs: of each chosen token (and its most likely alternatives), recorded per step by the
scheduler, and of a prompt's tokens (completions' `echo`), in one forward pass over the prompt.

The distribution is the model's next-token distribution as the sampler receives it: after the masks
that make some tokens impossible (the generation config's suppressed tokens, a grammar, min_tokens),
before repetition penalty, temperature, top-k and top-p (vLLM's default "raw" logprobs, with masks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from shared.generation import TokenLogprob, TopLogprob

# JSON has no -inf: an impossible token's logprob is written as this.
_FLOOR = -9999.0


class LogprobRecord(NamedTuple):
    token: int
    logprob: float
    top: list[tuple[int, float]]


def record_logprobs(logits: torch.Tensor, token: int, top_n: int) -> LogprobRecord:
    """The logprob of `token` under one row of logits [vocab], and the `top_n` most likely tokens."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    top: list[tuple[int, float]] = []
    if top_n > 0:
        values, ids = torch.topk(logprobs, min(top_n, logprobs.shape[-1]))
        top = list(zip(ids.tolist(), values.tolist(), strict=True))
    return LogprobRecord(token, float(logprobs[token]), top)


def prompt_records(model: Any, prompt_ids: list[int], top_n: int) -> list[LogprobRecord | None]:
    """Each prompt token's logprob given the ones before it (None for the first), in one forward."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt_ids], device=device)).logits[0, :-1]
    records: list[LogprobRecord | None] = [None]
    records += [record_logprobs(logits[i], token, top_n) for i, token in enumerate(prompt_ids[1:])]
    return records


def token_logprobs(
    vocab: Sequence[bytes], records: Sequence[LogprobRecord | None], ids: Sequence[int]
) -> list[TokenLogprob]:
    """Records as OpenAI's entries: each token's UTF-8 bytes (`vocab`: each id's bytes, as the
    grammar engine decodes them) and their text (a token that is part of a character: U+FFFD)."""
    out = []
    for token, record in zip(ids, records, strict=True):
        text, raw = _text(vocab, token)
        if record is None:
            out.append(TokenLogprob(token=text, logprob=None, bytes=raw))
            continue
        top = [
            TopLogprob(token=t, logprob=max(lp, _FLOOR), bytes=b) for t, b, lp in _alternatives(vocab, record)
        ]
        out.append(TokenLogprob(token=text, logprob=max(record.logprob, _FLOOR), bytes=raw, top=top))
    return out


def _alternatives(vocab: Sequence[bytes], record: LogprobRecord) -> list[tuple[str, bytes, float]]:
    return [(*_text(vocab, i), lp) for i, lp in record.top]


def _text(vocab: Sequence[bytes], token: int) -> tuple[str, bytes]:
    raw = vocab[token] if 0 <= token < len(vocab) else b""
    # bytes(): xgrammar hands some tokens' bytes as its FFI's subclass, which msgspec won't encode.
    return raw.decode("utf-8", errors="replace"), bytes(raw)
