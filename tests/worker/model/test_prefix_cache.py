"""Automatic prefix caching and chunked prefill on real tiny models: the same greedy text with and
without a cache hit and with and without chunks (sliding-window caches too), hits reported, a
prefix shared by concurrent requests, running streams served between a long prompt's chunks, and
the cache's LRU within its budget."""

from __future__ import annotations

import threading
from functools import partial

import pytest
import torch

from shared.generation import GenerateRequest, GenerateResult, SamplingParams
from tests.worker.conftest import NewEngine
from tests.worker.model.test_batching import PROMPTS, _concurrently
from worker.model.engine import Engine
from worker.model.prefix_cache import PrefixCache

PREFIX = "The river runs through the valley, past the old mill and under the stone bridge to the sea. " * 6
QUESTIONS = ["Where", "What is the name of", "Then the", "Why"]
OFF = {"prefix_cache_tokens": 0, "prefill_chunk_tokens": 0}


def _greedy(prompt: str, tokens: int = 24) -> GenerateRequest:
    return GenerateRequest(prompt=prompt, params=SamplingParams(temperature=0, max_new_tokens=tokens))


def _texts(engine: Engine, prompts: list[str]) -> list[GenerateResult]:
    return [engine.generate(_greedy(p)) for p in prompts]


@pytest.mark.parametrize(
    "family",
    [
        "llama",
        "gemma3",
        "mistral_sliding",
        "gpt2",
        "bloom",
        "opt",
        "falcon",
        "gpt_neox",
        "gptj",
        "gpt_neo",
        "gemma",
    ],
)
def test_a_prefix_cache_hit_gives_the_text_of_a_full_prefill(new_engine: NewEngine, family: str) -> None:
    prompts = [PREFIX + q for q in QUESTIONS]
    plain = [r.text for r in _texts(new_engine(family, **OFF), prompts)]
    for chunk in (0, 8):  # the hit's rest in one piece, and in chunks of 8
        cached = new_engine(family, prefix_cache_tokens=4096, prefill_chunk_tokens=chunk)
        results = _texts(cached, prompts)
        assert [r.text for r in results] == plain, chunk
        assert results[0].cached_tokens == 0
        assert all(r.cached_tokens >= 96 for r in results[1:])  # the prefix's whole blocks at least
        assert all(r.cached_tokens % 16 == 0 and r.cached_tokens < r.prompt_tokens for r in results)
        cache = cached._scheduler.prefix_cache  # type: ignore[union-attr]
        assert cache is not None and cache.hit_tokens == sum(r.cached_tokens for r in results)
        assert cache.queried_tokens == sum(r.prompt_tokens for r in results)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_chunked_prefill_gives_the_text_of_one_piece(new_engine: NewEngine, family: str) -> None:
    prompts = [PREFIX + q for q in QUESTIONS] + PROMPTS[:4]
    plain = [r.text for r in _texts(new_engine(family, **OFF), prompts)]
    chunked = new_engine(family, prefix_cache_tokens=0, prefill_chunk_tokens=7)
    assert [r.text for r in _texts(chunked, prompts)] == plain
    together = _concurrently([partial(chunked.generate, _greedy(p)) for p in prompts])
    assert [r.text for r in together] == plain


def test_concurrent_requests_with_one_prefix_share_it(new_engine: NewEngine) -> None:
    prompts = [PREFIX + q for q in QUESTIONS]
    plain = [r.text for r in _texts(new_engine("llama", **OFF), prompts)]
    engine = new_engine("llama", prefix_cache_tokens=4096, prefill_chunk_tokens=32)
    together = _concurrently([partial(engine.generate, _greedy(p)) for p in prompts])
    assert [r.text for r in together] == plain
    # Prefilled one after another: the first one's blocks serve the three that arrived with it.
    assert sorted(r.cached_tokens > 0 for r in together) == [False, True, True, True]


def test_running_streams_advance_between_a_long_prompts_chunks(new_engine: NewEngine) -> None:
    engine = new_engine("llama", prefix_cache_tokens=0, prefill_chunk_tokens=8)
    running = engine.stream(_greedy(PROMPTS[0], tokens=400))
    next(running)  # it is decoding now
    long_prompt = PREFIX * 2  # ~400 tokens: 50 chunks of 8
    seen_before_first: list[int] = []
    counted = threading.Event()
    produced = [0]

    def read_running() -> None:
        for item in running:
            if isinstance(item, str):
                produced[0] += 1
            if counted.is_set():
                break

    reader = threading.Thread(target=read_running)
    reader.start()
    late = engine.stream(_greedy(long_prompt, tokens=4))
    next(late)  # the long prompt's first token
    seen_before_first.append(produced[0])
    counted.set()
    list(late)
    reader.join(timeout=60)
    running.close()
    # In one piece, the running stream would have waited through the whole prefill; in chunks of
    # 8 it got a token after (about) each of the ~50 chunks.
    assert seen_before_first[0] >= 30


def test_the_cache_evicts_least_recently_used_blocks_within_its_budget() -> None:
    cache = PrefixCache(64, block_tokens=16)  # four blocks

    def kv(n: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return [torch.randn(1, 2, n, 4)], [torch.randn(1, 2, n, 4)]

    a, b = list(range(100, 133)), list(range(200, 233))  # two blocks each, and one token more
    cache.store(a, *kv(len(a)))
    cache.store(b, *kv(len(b)))
    assert cache.held_tokens == 64 and cache.cached_length(a) == cache.cached_length(b) == 32
    length, keys, _ = cache.lookup(a)  # a is now the most recently used
    assert length == 32 and keys[0].shape == (1, 2, 32, 4)
    c = list(range(300, 317))  # one block
    cache.store(c, *kv(len(c)))
    assert cache.held_tokens == 64
    assert cache.cached_length(a) == 32  # kept: used last
    assert cache.cached_length(b) == 16  # its tail block went first, its head is still usable
    assert cache.cached_length([*c, 1]) == 16
    # A prompt that differs inside a block reuses only the blocks before it.
    assert cache.cached_length(a[:20] + [7] * 20) == 16
