"""Relevance scores from a cross-encoder (a one-label sequence classifier: ms-marco MiniLM,
bge-reranker, mxbai-rerank): each (query, document) pair encoded together, `[CLS] q [SEP] d [SEP]`,
its one logit through the model's activation, as sentence-transformers' CrossEncoder computes it
(sigmoid by default; the activation its config.json names otherwise)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from shared.errors import ContextLengthExceededError, InvalidRequestError
from shared.generation import ScoreRequest, ScoreResult

# Pairs per forward pass: bounds the padded batch's memory.
_BATCH = 32


class Scorer:
    """Turns a ScoreRequest into scores. Not thread-safe: the engine serialises calls."""

    def __init__(self, model: Any, tokenizer: Any, *, context_length: int) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self._context_length = context_length
        self._device = next(model.parameters()).device
        self._activation = _activation(model.config)

    def score(self, request: ScoreRequest) -> ScoreResult:
        if not request.pairs:
            raise InvalidRequestError(
                "there is nothing to score: send at least one document", param="documents"
            )
        encoded = [self._pair_ids(i, q, d) for i, (q, d) in enumerate(request.pairs)]
        scores: list[float] = []
        for start in range(0, len(encoded), _BATCH):
            scores.extend(self._forward(encoded[start : start + _BATCH]))
        return ScoreResult(scores=scores, prompt_tokens=sum(len(ids) for ids, _ in encoded))

    def _pair_ids(self, index: int, query: str, document: str) -> tuple[list[int], list[int]]:
        # As lists: called with one pair, a tokenizer takes an empty document for no document at all.
        enc = self._tokenizer([query], [document], add_special_tokens=True, truncation=False)
        ids: list[int] = enc.input_ids[0]
        types: list[int] = (enc.get("token_type_ids") or [[0] * len(ids)])[0]
        if len(ids) > self._context_length:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {self._context_length} tokens; the query with "
                f"document {index} is {len(ids)} tokens. Please shorten the query or the document.",
                param="documents",
            )
        return ids, types

    def _forward(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[float]:
        width = max(len(ids) for ids, _ in pairs)
        pad = self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(pairs), width), pad, dtype=torch.long)
        types = torch.zeros((len(pairs), width), dtype=torch.long)
        mask = torch.zeros((len(pairs), width), dtype=torch.long)
        for row, (seq, kinds) in enumerate(pairs):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            types[row, : len(kinds)] = torch.tensor(kinds, dtype=torch.long)
            mask[row, : len(seq)] = 1
        inputs = {"input_ids": ids, "attention_mask": mask}
        if getattr(self._model.config, "type_vocab_size", 0) > 1:  # BERT: the document is segment 1
            inputs["token_type_ids"] = types
        with torch.inference_mode():
            logits = self._model(**{k: v.to(self._device) for k, v in inputs.items()}).logits.float()
        return self._activation(logits[:, 0]).cpu().tolist()


def _activation(config: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """sentence-transformers' CrossEncoder: sigmoid for one label unless its config names another
    (`sentence_transformers.activation_fn`, e.g. Identity for raw logits)."""
    saved = getattr(config, "sentence_transformers", None) or {}
    name = str(saved.get("activation_fn", "") if isinstance(saved, dict) else "")
    if name.endswith("Identity"):
        return lambda x: x
    if name.endswith("Tanh"):
        return torch.tanh
    return torch.sigmoid
