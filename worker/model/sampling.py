"""Choosing the next token: sampling parameters resolved once per request, applied to logits.

We sample ourselves rather than through `model.generate` so that every request owns a
`torch.Generator` seeded from its `seed`: the same seed gives the same text whatever other
requests ran in between (a global `torch.manual_seed` would be shared by all of them). The logit
transforms are transformers' own processors (repetition penalty, temperature, top-k, top-p, in
`generate`'s order), so temperature 0 is exactly `generate(do_sample=False)`. Measured against
our former hand-written transforms (same tokens on every row): at a 32k-262k vocabulary they cost
the same or less (repetition penalty 2.5-5x less: a gather over the seen ids instead of a
where over the vocabulary); at a tiny model's 768 they cost ~30-70 us more per sampled token.
Plain greedy rows (the common case, and the bench's) never reach them.
"""

from __future__ import annotations

import secrets

import torch
from transformers.generation.logits_process import (
    LogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from shared.generation import ENGINE_DEFAULTS, SamplingParams

_SEED_MASK = (1 << 64) - 1


def resolve_params(request: SamplingParams, defaults: SamplingParams | None = None) -> SamplingParams:
    """The request's params over the model's defaults over the engine's: every field but `seed` set."""
    base = defaults.merged_over(ENGINE_DEFAULTS) if defaults is not None else ENGINE_DEFAULTS
    return request.merged_over(base)


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
        self._processors = self._chain()
        # OpenAI's logit_bias and presence/frequency penalties: applied to the logits first (so the
        # others see them); the penalties count generated tokens only, as OpenAI's do.
        self._bias = dict(params.logit_bias or {})
        self.presence_penalty = float(params.presence_penalty or 0.0)
        self.frequency_penalty = float(params.frequency_penalty or 0.0)
        self._generated: dict[int, int] = {}
        # Tokens seen so far, for the repetition penalty (prompt included in causal models, as
        # transformers does): ids not yet placed in the buffer (whose width is the vocabulary's,
        # known at the first logits: padded vocabularies differ), then the buffer and its fill.
        self._unplaced: list[int] = []
        self._seen = torch.zeros(1, 0, dtype=torch.long, device=device)
        self._count = 0

    def _chain(self) -> list[LogitsProcessor]:
        chain: list[LogitsProcessor] = []
        if self.repetition_penalty != 1.0:
            chain.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if self.temperature == 0.0:
            return chain
        chain.append(TemperatureLogitsWarper(self.temperature))
        if self.top_k > 0:
            chain.append(TopKLogitsWarper(self.top_k))
        if self.top_p < 1.0:
            chain.append(TopPLogitsWarper(self.top_p))
        return chain

    @property
    def plain_greedy(self) -> bool:
        """The choice is the argmax of the logits as they are (a batch takes it for all rows at once)."""
        return self.temperature == 0.0 and self.repetition_penalty == 1.0 and not self._adjusts

    @property
    def _adjusts(self) -> bool:
        return bool(self._bias) or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    def observe(self, token_ids: list[int] | int, *, generated: bool = False) -> None:
        if generated and isinstance(token_ids, int) and (self.presence_penalty or self.frequency_penalty):
            self._generated[token_ids] = self._generated.get(token_ids, 0) + 1
        if self.repetition_penalty == 1.0:
            return
        if isinstance(token_ids, int):
            self._unplaced.append(token_ids)
        else:
            self._unplaced.extend(token_ids)

    def choose(self, logits: torch.Tensor) -> int:
        """The next token id from one row of logits (shape [vocab])."""
        scores = logits.float()[None]
        if self._adjusts:
            scores = self._adjusted(scores)
        seen = self._seen_ids(scores.shape[-1]) if self.repetition_penalty != 1.0 else self._seen
        for processor in self._processors:
            scores = processor(seen, scores)
        if self.temperature == 0.0:
            return int(scores.argmax())
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self._generator))

    def _adjusted(self, scores: torch.Tensor) -> torch.Tensor:
        """`scores` [1, vocab] plus the logit bias, minus the presence and frequency penalties."""
        scores = scores.clone()
        width = scores.shape[-1]
        bias = {i: b for i, b in self._bias.items() if 0 <= i < width}
        if bias:
            index = torch.tensor(list(bias), dtype=torch.long, device=scores.device)
            scores[0, index] += torch.tensor(list(bias.values()), dtype=scores.dtype, device=scores.device)
        counts = {i: n for i, n in self._generated.items() if 0 <= i < width}
        if counts:
            index = torch.tensor(list(counts), dtype=torch.long, device=scores.device)
            n = torch.tensor(list(counts.values()), dtype=scores.dtype, device=scores.device)
            scores[0, index] -= self.presence_penalty + self.frequency_penalty * n
        return scores

    def _seen_ids(self, vocab: int) -> torch.Tensor:
        """The seen ids [1, n] as the repetition penalty reads them (ids past the vocabulary dropped)."""
        ids = [t for t in self._unplaced if 0 <= t < vocab]
        self._unplaced = []
        end = self._count + len(ids)
        if end > self._seen.shape[1]:  # grow by doubling: one copy per doubling, not per token
            grown = torch.zeros(1, max(64, 2 * end), dtype=torch.long, device=self._device)
            grown[:, : self._count] = self._seen[:, : self._count]
            self._seen = grown
        if ids:
            self._seen[0, self._count : end] = torch.tensor(ids, dtype=torch.long, device=self._device)
        self._count = end
        return self._seen[:, :end]
