"""Choosing the next token: sampling parameters resolved once per request, applied to logits.

We sample ourselves rather than through `model.generate` so that every request owns a
`torch.Generator` seeded from its `seed`: the same seed gives the same text whatever other
requests ran in between (a global `torch.manual_seed` would be shared by all of them). The logit
transforms follow transformers' order and semantics (repetition penalty, temperature, top-k,
top-p), so temperature 0 is exactly `generate(do_sample=False)`.
"""

from __future__ import annotations

import secrets
from typing import Any

import torch

from shared.generation import ENGINE_DEFAULTS, SamplingParams

_SEED_MASK = (1 << 64) - 1


def resolve_params(request: SamplingParams, defaults: SamplingParams | None = None) -> SamplingParams:
    """The request's params over the model's defaults over the engine's: every field but `seed` set."""
    base = defaults.merged_over(ENGINE_DEFAULTS) if defaults is not None else ENGINE_DEFAULTS
    return request.merged_over(base)


def generate_kwargs(params: SamplingParams) -> dict[str, Any]:
    """The same sampling as `model.generate` keyword arguments (for comparisons; seeds not included)."""
    kwargs: dict[str, Any] = {"max_new_tokens": params.max_new_tokens}
    if params.repetition_penalty not in (None, 1.0):
        kwargs["repetition_penalty"] = params.repetition_penalty
    if not params.temperature:
        return {**kwargs, "do_sample": False}
    return {
        **kwargs,
        "do_sample": True,
        "temperature": params.temperature,
        "top_p": params.top_p if params.top_p is not None else 1.0,
        "top_k": params.top_k or 0,
    }


class TokenSampler:
    """Picks each next token of one sequence; `observe` every chosen (and prompt) token."""

    def __init__(self, params: SamplingParams, *, device: torch.device) -> None:
        # Below 1e-5 (vLLM's epsilon) is greedy: dividing float32 logits by it would overflow to inf/NaN.
        self.temperature = t if (t := float(params.temperature or 0.0)) >= 1e-5 else 0.0
        self.top_p = float(params.top_p if params.top_p is not None else 1.0)
        self.top_k = int(params.top_k or 0)
        # Clamped so that penalised float32 logits stay finite (a penalty of 1e-300 made them inf).
        self.repetition_penalty = min(max(float(params.repetition_penalty or 1.0), 1e-4), 1e4)
        self.seed = params.seed if params.seed is not None else secrets.randbits(63)
        self._generator = torch.Generator(device=device)
        self._generator.manual_seed(self.seed & _SEED_MASK)  # any int, negative too
        self._device = device
        # Tokens seen so far, for the repetition penalty (prompt included in causal models, as
        # transformers does); sized from the first logits, since padded vocabularies differ.
        self._unplaced: list[int] = []
        self._seen: torch.Tensor | None = None

    @property
    def plain_greedy(self) -> bool:
        """The choice is the argmax of the logits as they are (a batch takes it for all rows at once)."""
        return self.temperature == 0.0 and self.repetition_penalty == 1.0

    def observe(self, token_ids: list[int] | int) -> None:
        if self.repetition_penalty == 1.0:
            return
        ids = [token_ids] if isinstance(token_ids, int) else token_ids
        if self._seen is None:
            self._unplaced.extend(ids)
        else:
            self._seen[torch.tensor(ids, dtype=torch.long, device=self._device)] = True

    def choose(self, logits: torch.Tensor) -> int:
        """The next token id from one row of logits (shape [vocab])."""
        scores = logits.float()
        if self.repetition_penalty != 1.0:
            scores = apply_repetition_penalty(
                scores, self._seen_mask(scores.shape[-1]), self.repetition_penalty
            )
        if self.temperature == 0.0:
            return int(scores.argmax())
        scores = scores / self.temperature
        if self.top_k > 0:
            scores = apply_top_k(scores, self.top_k)
        if self.top_p < 1.0:
            scores = apply_top_p(scores, self.top_p)
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self._generator))

    def _seen_mask(self, vocab: int) -> torch.Tensor:
        if self._seen is None:
            self._seen = torch.zeros(vocab, dtype=torch.bool, device=self._device)
            ids = [t for t in self._unplaced if 0 <= t < vocab]
            if ids:
                self._seen[torch.tensor(ids, dtype=torch.long, device=self._device)] = True
            self._unplaced = []
        return self._seen


def apply_repetition_penalty(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty, as transformers applies it: seen tokens' logits divided (or, if negative,
    multiplied) by `penalty`."""
    penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalised, scores)


def apply_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    if k >= scores.shape[-1]:
        return scores
    threshold = torch.topk(scores, k, dim=-1).values[..., -1:]
    return scores.masked_fill(scores < threshold, float("-inf"))


def apply_top_p(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probabilities add up to `top_p`."""
    sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
    sorted_probs = torch.softmax(sorted_scores, dim=-1)
    # Drop a token when the ones before it already reach top_p; the first one always stays.
    drop_sorted = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p
    drop_sorted[..., 0] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))
