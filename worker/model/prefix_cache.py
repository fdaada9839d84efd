"""Automatic prefix caching: the KV of prompt prefixes seen before, kept block by block, so that a
prompt starting with one of them prefills only the rest (vLLM's automatic prefix caching).

A prompt is cut into blocks of `BLOCK_TOKENS` ids. Each block is keyed by a hash chain (its
parent's key and its own ids), so a key stands for the whole prefix up to the block's end, and
prompts that share a prefix share its blocks. A block holds every layer's keys and values of its
tokens as computed after that prefix (full-attention and sliding layers alike: a sliding layer
keeps only its window in the batch, but a later prompt may end anywhere). Blocks are evicted least
recently used once they hold more than the budget's tokens; a lookup touches a chain's blocks from
its last to its first, so a chain is evicted from its tail and its head stays usable longest.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

BLOCK_TOKENS = 16  # vLLM's default block size: the granularity of a hit


@dataclass(frozen=True, eq=False)
class _Block:
    parent: int | None
    ids: tuple[int, ...]
    keys: list[torch.Tensor]  # per layer [1, kv_heads, BLOCK_TOKENS, head_dim]
    values: list[torch.Tensor]


class PrefixCache:
    """Owns the kept blocks (LRU within `budget_tokens`) and the counters of queried and hit tokens."""

    def __init__(self, budget_tokens: int, *, block_tokens: int = BLOCK_TOKENS) -> None:
        self.block = block_tokens
        self._capacity = budget_tokens // block_tokens
        self._blocks: OrderedDict[int, _Block] = OrderedDict()
        self.queried_tokens = 0  # prompt tokens looked up (vllm:prefix_cache_queries)
        self.hit_tokens = 0  # of which came from the cache (vllm:prefix_cache_hits)

    @property
    def held_tokens(self) -> int:
        return len(self._blocks) * self.block

    def cached_length(self, ids: list[int]) -> int:
        """How many leading tokens of `ids` a lookup would reuse (no counting, no touching)."""
        return len(self._chain(ids)) * self.block

    def lookup(self, ids: list[int]) -> tuple[int, list[torch.Tensor], list[torch.Tensor]]:
        """The longest cached prefix of `ids` that leaves at least one token to compute (its last
        logits are needed): its length and each layer's keys and values [1, heads, length, dim]."""
        chain = self._chain(ids)
        self.queried_tokens += len(ids)
        self.hit_tokens += len(chain) * self.block
        if not chain:
            return 0, [], []
        for key, _ in reversed(chain):
            self._blocks.move_to_end(key)
        blocks = [block for _, block in chain]
        layers = range(len(blocks[0].keys))
        keys = [torch.cat([b.keys[i] for b in blocks], dim=2) for i in layers]
        values = [torch.cat([b.values[i] for b in blocks], dim=2) for i in layers]
        return len(chain) * self.block, keys, values

    def count_miss(self, ids: list[int]) -> None:
        """A prompt prefilled without a lookup (nothing to reuse): it still counts as queried."""
        self.queried_tokens += len(ids)

    def store(self, ids: list[int], keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Keep the full blocks of `ids`, whose layers' keys and values [1, heads, >= len(ids), dim]
        end with `ids`' own (a row's prefill)."""
        if self._capacity == 0:
            return
        offset = keys[0].shape[2] - len(ids)
        parent: int | None = None
        chain: list[int] = []
        for start in range(0, len(ids) - self.block + 1, self.block):
            block_ids = tuple(ids[start : start + self.block])
            key = hash((parent, block_ids))
            held = self._blocks.get(key)
            if held is None or held.parent != parent or held.ids != block_ids:
                cut = slice(offset + start, offset + start + self.block)
                self._blocks[key] = _Block(
                    parent,
                    block_ids,
                    [k[:, :, cut].clone() for k in keys],
                    [v[:, :, cut].clone() for v in values],
                )
            chain.append(key)
            parent = key
        for key in reversed(chain):  # the head most recent: a chain is evicted from its tail
            self._blocks.move_to_end(key)
        while len(self._blocks) > self._capacity:
            self._blocks.popitem(last=False)

    def _chain(self, ids: list[int]) -> list[tuple[int, _Block]]:
        chain: list[tuple[int, _Block]] = []
        parent: int | None = None
        for start in range(0, len(ids) - self.block, self.block):  # `<` len: one token stays
            block_ids = tuple(ids[start : start + self.block])
            key = hash((parent, block_ids))
            block = self._blocks.get(key)
            if block is None or block.parent != parent or block.ids != block_ids:
                break
            chain.append((key, block))
            parent = key
        return chain
