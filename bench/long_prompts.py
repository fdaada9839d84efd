"""Long prompts through the gateway (`make bench-real`): prefix caching, chunked prefill, fair
first tokens (issue 23).

- a request repeating a ~1,500-token prefix: its first token against the first request's (the
  prefix differs per round, so each round's first request misses the cache);
- 4 running streams while a ~3,000-token prompt arrives: their largest gap between two tokens
  during its prefill against their median gap;
- the aggregate tok/s of 8 streams with the features on against a server with them off
  (DUKAT_PREFIX_CACHE_TOKENS=0, DUKAT_PREFILL_CHUNK_TOKENS=0), measured by the caller.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import httpx

from bench.clients import http_client
from bench.completions import PROMPTS, completion_body, completion_stream
from bench.harness import median

# Sentences that tokenize to ~25 tokens each; repeated with their index, so no two are alike.
_SENTENCE = "Note {i}: the harbour master logged the ship's cargo, its crew and the weather at dawn. "
OFF_ENV = {"DUKAT_PREFIX_CACHE_TOKENS": "0", "DUKAT_PREFILL_CHUNK_TOKENS": "0"}


def long_text(sentences: int, tag: str = "") -> str:
    return tag + "".join(_SENTENCE.format(i=i) for i in range(sentences))


async def repeated_prefix(url: str, model: str, *, sentences: int = 60, rounds: int = 3) -> dict[str, Any]:
    """TTFT of a request whose prefix the previous request sent, against that previous request's."""
    ratios, firsts, repeats, cached = [], [], [], []
    async with http_client(url) as client:
        await completion_stream(client, completion_body(model, PROMPTS[0], 4))  # warm-up
        for r in range(rounds):
            prefix = long_text(sentences, tag=f"Logbook {r}. ")
            first = await completion_stream(client, completion_body(model, prefix + "Summary:", 4))
            again = await _usage_stream(client, completion_body(model, prefix + "In short,", 4))
            firsts.append(first.first_s)
            repeats.append(again[0])
            cached.append(again[1])
            ratios.append(again[0] / first.first_s)
    return {
        "prompt_tokens": first.prompt_tokens,
        "first_ttft_s": firsts,
        "repeat_ttft_s": repeats,
        "cached_tokens": cached,
        "ratio": median(ratios),
    }


async def _usage_stream(client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[float, int]:
    """First-token seconds and usage.prompt_tokens_details.cached_tokens of one stream."""
    started = time.perf_counter()
    first, cached = 0.0, 0
    async with client.stream("POST", "/v1/completions", json=body) as r:
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if any(c.get("text") for c in chunk.get("choices", [])):
                first = first or time.perf_counter() - started
            if usage := chunk.get("usage"):
                cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return first, cached


async def _token_times(client: httpx.AsyncClient, body: dict[str, Any], times: list[float]) -> None:
    async with client.stream("POST", "/v1/completions", json=body) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if any(c.get("text") for c in chunk.get("choices", [])):
                    times.append(time.perf_counter())


async def gap_under_long_prompt(
    url: str, model: str, *, streams: int = 4, tokens: int = 160, sentences: int = 120
) -> dict[str, Any]:
    """4 streams decode; once each has 16 tokens a ~3,000-token prompt arrives. Their largest gap
    between two tokens from its arrival to its first token, against their median gap."""
    times: list[list[float]] = [[] for _ in range(streams)]
    async with http_client(url, connections=streams + 1) as client:
        await completion_stream(client, completion_body(model, PROMPTS[0], 4))  # warm-up
        running = [
            asyncio.create_task(_token_times(client, completion_body(model, p, tokens), t))
            for p, t in zip(PROMPTS[:streams], times, strict=True)
        ]
        while min(len(t) for t in times) < 16 and not all(task.done() for task in running):
            await asyncio.sleep(0.005)
        arrived = time.perf_counter()
        long = await completion_stream(client, completion_body(model, long_text(sentences, "Log. "), 4))
        answered = arrived + long.first_s
        await asyncio.gather(*running)
    pairs = [pair for t in times for pair in itertools.pairwise(t)]
    gaps = [b - a for a, b in pairs]
    during = [b - a for a, b in pairs if b > arrived and a < answered]
    worst = max(during, default=0.0)
    return {
        "long_prompt_tokens": long.prompt_tokens,
        "long_ttft_s": long.first_s,
        "median_gap_s": median(gaps),
        "largest_gap_s": worst,
        "ratio": worst / median(gaps),
        "tokens_each": [len(t) for t in times],
    }


async def eight_streams(url: str, model: str, *, tokens: int = 32, rounds: int = 2) -> float:
    """Aggregate tok/s of 8 concurrent greedy streams (the median of `rounds`, after a warm round)."""
    bodies = [completion_body(model, p, tokens) for p in PROMPTS[:8]]
    rates = []
    async with http_client(url, connections=8) as client:
        for r in range(rounds + 1):
            started = time.perf_counter()
            done = await asyncio.gather(*(completion_stream(client, b) for b in bodies))
            if r:
                rates.append(sum(t.completion_tokens for t in done) / (time.perf_counter() - started))
    return median(rates)
