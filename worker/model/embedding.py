"""Sentence embeddings from an encoder (BERT, RoBERTa) or a decoder embedder (Qwen3-Embedding), pooled
as the model's sentence-transformers files state (worker/model/pooling.py), as sentence-transformers
computes them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from shared.errors import ContextLengthExceededError, InvalidRequestError
from shared.generation import EmbedRequest, EmbedResult
from shared.token_ids import foreign_token_ids
from worker.model.pooling import Pooling, pool

# Inputs per forward pass: bounds the padded batch's memory.
_BATCH = 32


class Embedder:
    """Turns an EmbedRequest into vectors. Not thread-safe: the engine serialises calls."""

    def __init__(
        self, model: Any, tokenizer: Any, *, context_length: int, pooling: Pooling | None = None
    ) -> None:
        self._model = model
        self._pooling = pooling or Pooling()
        self._tokenizer = tokenizer
        self._context_length = context_length
        self._device = next(model.parameters()).device
        self._vocab_size = int(model.get_input_embeddings().num_embeddings)
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._prefix, self._suffix = _special_wrapping(tokenizer)

    def embed(self, request: EmbedRequest) -> EmbedResult:
        if not request.inputs:
            raise InvalidRequestError("input must not be empty", param="input")
        items: list[str | list[int]] = list(request.inputs)
        sequences = [self._input_ids(i, item) for i, item in enumerate(items)]
        vectors: list[list[float]] = []
        for start in range(0, len(sequences), _BATCH):
            vectors.extend(self._forward(sequences[start : start + _BATCH]).tolist())
        return EmbedResult(vectors=vectors, prompt_tokens=sum(len(s) for s in sequences))

    def _input_ids(self, index: int, item: str | list[int]) -> list[int]:
        """The model input of one item, special tokens included, checked against the context."""
        if isinstance(item, str):
            ids: list[int] = self._tokenizer(item, add_special_tokens=True, truncation=False).input_ids
        else:
            bad = next((t for t in item if not 0 <= t < self._vocab_size), None)
            if bad is not None:
                raise foreign_token_ids(
                    f"input[{index}] holds token id {bad}, outside this model's vocabulary "
                    f"(0..{self._vocab_size - 1}): these ids come from another tokenizer"
                )
            ids = [*self._prefix, *item, *self._suffix]
        if not ids:  # an empty string with a tokenizer that adds no special tokens: nothing to pool
            raise InvalidRequestError(
                f"input[{index}] is empty for this model (zero tokens); send some text", param="input"
            )
        if len(ids) > self._context_length:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {self._context_length} tokens, however you "
                f"requested {len(ids)} tokens in input[{index}]. Please reduce the length of the input.",
                param="input",
            )
        return ids

    def _forward(self, sequences: Sequence[list[int]]) -> torch.Tensor:
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        ids, mask = ids.to(self._device), mask.to(self._device)
        with torch.inference_mode():
            hidden = self._model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        return pool(hidden, mask, self._pooling).cpu()


def _special_wrapping(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after one sequence (e.g. [CLS] … [SEP]),
    found by encoding a probe with and without them: token-id inputs get the same wrapping."""
    probe = "hello world"
    bare: list[int] = tokenizer(probe, add_special_tokens=False).input_ids
    full: list[int] = tokenizer(probe, add_special_tokens=True).input_ids
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    return [], []
