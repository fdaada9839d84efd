"""6. Constrained decoding's cost: a JSON-schema stream's tokens/s against a free stream's on the same
model, and free streams beside constrained ones in one batch against free streams beside free ones.

Both kinds sample (temperature 1, seeded) so the free stream isn't greedy's repetition and the
constrained one isn't closed at once; a stream's rate is its tokens over the time after its first
token (the grammar's compile is cached after the warm-up). The constrained schema is an object
holding an array of strings, so the grammar is in play at every token. The rounds alternate the
kinds; each figure is a median. The mixed batch: 8 free streams with 8 more free ones, then 8 free
streams with 8 constrained ones, alternated 3 times; the figure is the free streams' median
tokens/s, mixed / all-free. The same again with constrained streams whose schema has a long shortest
output (an array of at least 25 strings of at least 3 characters): their budget check must stay cheap
while its closing path is long.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from bench.clients import Timed, chat_body, http_client, http_stream
from bench.harness import MAIN_MODEL, Context, Report, median

TOKENS = 96
ROUNDS = 5
BATCH = 8
BATCH_ROUNDS = 3
TARGET = 0.8
SCHEMA = {
    "type": "object",
    "properties": {"notes": {"type": "array", "items": {"type": "string"}}},
    "required": ["notes"],
}
# A long shortest output (~190 tokens on the tiny Llama's vocabulary): the budget check's closing
# path is long at every step.
LONG_SCHEMA = {
    "type": "object",
    "properties": {"notes": {"type": "array", "minItems": 25, "items": {"type": "string", "minLength": 3}}},
    "required": ["notes"],
}
LONG_TOKENS = 400
PROMPT = "List some notes about the sea as JSON."


def body(constrained: bool, seed: int, *, long: bool = False) -> dict[str, Any]:
    out = chat_body(MAIN_MODEL, PROMPT, LONG_TOKENS if constrained and long else TOKENS, stream=True)
    out.update(temperature=1.0, seed=seed)
    if constrained:
        schema = LONG_SCHEMA if long else SCHEMA
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "notes", "schema": schema}}
    return out


def rate(t: Timed) -> float:
    after_first = t.total_s - t.first_s
    return (t.completion_tokens - 1) / after_first if after_first > 0 else 0.0


async def beside(client: Any, *, long: bool) -> tuple[list[Timed], list[Timed], list[Timed]]:
    """The free streams of BATCH_ROUNDS batches of 2 * BATCH beside free ones, and beside constrained
    ones (alternated so load from elsewhere hits both alike); then the constrained streams."""
    all_free: list[Timed] = []
    mixed: list[Timed] = []
    constrained: list[Timed] = []
    for _ in range(BATCH_ROUNDS):
        together = await asyncio.gather(*(http_stream(client, body(False, s)) for s in range(2 * BATCH)))
        all_free += together[:BATCH]
        together = await asyncio.gather(
            *(http_stream(client, body(s >= BATCH, s, long=long)) for s in range(2 * BATCH))
        )
        mixed += together[:BATCH]
        constrained += together[BATCH:]
    return all_free, mixed, constrained


def valid(text: str) -> bool:
    """Whether a long-minimum stream's text is a whole JSON value of its schema (25+ notes)."""
    try:
        value = json.loads(text)
    except ValueError:
        return False
    notes = value.get("notes") if isinstance(value, dict) else None
    return isinstance(notes, list) and len(notes) >= 25 and all(len(n) >= 3 for n in notes)


async def measure(url: str) -> dict[str, Any]:
    async with http_client(url, connections=2 * BATCH) as client:
        await http_stream(client, body(True, 0))  # warm-up: the grammar compiles once
        await http_stream(client, body(True, 0, long=True))
        free, constrained = [], []
        for r in range(ROUNDS):
            free.append(await http_stream(client, body(False, r)))
            constrained.append(await http_stream(client, body(True, r)))
        all_free, mixed, _ = await beside(client, long=False)
        long_free, long_mixed, long_constrained = await beside(client, long=True)
    return {
        "free_tokens_per_s": median([rate(t) for t in free]),
        "constrained_tokens_per_s": median([rate(t) for t in constrained]),
        "constrained_tokens": [t.completion_tokens for t in constrained],
        "free_beside_free_tokens_per_s": median([rate(t) for t in all_free]),
        "free_beside_constrained_tokens_per_s": median([rate(t) for t in mixed]),
        "free_beside_free_tokens_per_s_long_round": median([rate(t) for t in long_free]),
        "free_beside_long_minimum_tokens_per_s": median([rate(t) for t in long_mixed]),
        "long_minimum_tokens": [t.completion_tokens for t in long_constrained],
        "long_minimum_valid": sum(valid(t.text) for t in long_constrained),
    }


def run(ctx: Context, report: Report) -> None:
    m = asyncio.run(measure(ctx.served.url))
    report.raw["structured"] = m
    alone = m["constrained_tokens_per_s"] / m["free_tokens_per_s"]
    mixed = m["free_beside_constrained_tokens_per_s"] / m["free_beside_free_tokens_per_s"]
    report.add(
        "structured",
        "JSON-schema stream tok/s / free stream tok/s (same model)",
        f">= {TARGET:g}",
        f"x{alone:.2f} ({m['constrained_tokens_per_s']:.0f} vs {m['free_tokens_per_s']:.0f} tok/s)",
        alone >= TARGET,
    )
    report.add(
        "structured",
        f"free rows beside {BATCH} constrained / beside {BATCH} free (tok/s)",
        f">= {TARGET:g}",
        f"x{mixed:.2f} ({m['free_beside_constrained_tokens_per_s']:.0f} vs "
        f"{m['free_beside_free_tokens_per_s']:.0f} tok/s)",
        mixed >= TARGET,
    )
    long = m["free_beside_long_minimum_tokens_per_s"] / m["free_beside_free_tokens_per_s_long_round"]
    report.add(
        "structured",
        f"free rows beside {BATCH} constrained with a long shortest output / beside {BATCH} free",
        f">= {TARGET:g}",
        f"x{long:.2f} ({m['free_beside_long_minimum_tokens_per_s']:.0f} vs "
        f"{m['free_beside_free_tokens_per_s_long_round']:.0f} tok/s; "
        f"{m['long_minimum_valid']}/{len(m['long_minimum_tokens'])} valid)",
        long >= TARGET,
    )
