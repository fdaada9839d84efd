"""3. Batching: 16 concurrent streams on one model worker against the same 16 streams run alone.

Each of 16 different prompts is first streamed alone (one after another), then all 16 at once over
16 connections (httpx, SSE), greedy. Aggregate tokens/s is every stream's tokens over the wall time
from the first request to the last `[DONE]`; a lone stream's tokens/s and time to first token are
the medians of the alone runs. Each concurrent stream's text must equal its alone text.

The 16 concurrent streams are also sent straight to the worker's wire (one multiplexed connection,
as the gateway keeps): that split row tells the worker's scheduler from the gateway.

The caches that used to fall back to one sequence at a time are measured on the engine in process
(the same scheduler the worker runs, no gateway): a Gemma 3-shaped model (sliding-window layers
and a full one, window 32, so 64 tokens cross it) and the main Llama in 8-bit (LLM.int8, 32
tokens), each as 16 concurrent greedy requests against the same 16 run one after another.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from bench.clients import DirectClient, Timed, chat_body, http_client, http_stream, wire_request
from bench.harness import CACHE, MAIN_MODEL, MAIN_SHAPE, Context, Report, median
from shared.settings import Quantization

STREAMS = 16
TOKENS = 64
PROMPTS = [
    "Tell me about the sea.",
    "What is the capital of France?",
    "Write a poem about the wind.",
    "How many legs does a spider have?",
    "Describe a morning at the bakery.",
    "Explain how a gateway works.",
    "Give me a recipe for bread.",
    "What happens when water boils?",
    "Tell a story about a brave king.",
    "Why do birds sing in the trees?",
    "Describe the market in summer.",
    "What is the square root of 81?",
    "Write a letter to a friend in Köln.",
    "Plan a release for the team.",
    "Describe the museum's old maps.",
    "What do children do when the lake freezes?",
]
TARGET_SPEEDUP = 6.0
TARGET_TTFT = 5.0
TARGET_CACHE_SPEEDUP = 4.0
GEMMA3_SHAPE: dict[str, Any] = {"hidden": 256, "layers": 4, "init_std": 0.5, "sliding_window": 32}


async def direct_together(address: str) -> tuple[list[Timed], float]:
    async with DirectClient(address) as client:
        started = time.perf_counter()
        together = await asyncio.gather(*(client.stream(wire_request(p, TOKENS)) for p in PROMPTS[:STREAMS]))
        return list(together), time.perf_counter() - started


async def measure(url: str, address: str) -> dict[str, Any]:
    bodies = [chat_body(MAIN_MODEL, p, TOKENS, stream=True) for p in PROMPTS[:STREAMS]]
    async with http_client(url, connections=STREAMS) as client:
        await http_stream(client, bodies[0])  # warm-up
        alone: list[Timed] = [await http_stream(client, b) for b in bodies]
        started = time.perf_counter()
        together: list[Timed] = await asyncio.gather(*(http_stream(client, b) for b in bodies))
        wall = time.perf_counter() - started
    direct, direct_wall = await direct_together(address)
    lone_tps = median([t.completion_tokens / t.total_s for t in alone])
    lone_ttft = median([t.first_s for t in alone])
    total_tokens = sum(t.completion_tokens for t in together)
    return {
        "streams": STREAMS,
        "max_tokens": TOKENS,
        "alone": [t.__dict__ for t in alone],
        "together": [t.__dict__ for t in together],
        "wall_s": wall,
        "lone_tokens_per_s": lone_tps,
        "lone_ttft_s": lone_ttft,
        "aggregate_tokens_per_s": total_tokens / wall,
        "speedup": total_tokens / wall / lone_tps,
        "slowest_ttft_s": max(t.first_s for t in together),
        "ttft_ratio": max(t.first_s for t in together) / lone_ttft,
        "same_text": [a.text == b.text for a, b in zip(alone, together, strict=True)],
        "direct_together": [t.__dict__ for t in direct],
        "direct_aggregate_tokens_per_s": sum(t.completion_tokens for t in direct) / direct_wall,
        "direct_slowest_ttft_s": max(t.first_s for t in direct),
        "direct_same_text": [a.text == b.text for a, b in zip(alone, direct, strict=True)],
    }


def run(ctx: Context, report: Report) -> None:
    m = asyncio.run(measure(ctx.served.url, ctx.served.worker_address(MAIN_MODEL)))
    report.raw["batching"] = m
    b = "batching"
    report.add(
        b,
        f"aggregate tok/s, {STREAMS} streams / one stream alone",
        f">= {TARGET_SPEEDUP:g}",
        f"x{m['speedup']:.2f} ({m['aggregate_tokens_per_s']:.0f} vs {m['lone_tokens_per_s']:.0f} tok/s)",
        m["speedup"] >= TARGET_SPEEDUP,
    )
    same = sum(m["same_text"])
    report.add(
        b,
        "each stream's text equals its text alone (temperature 0)",
        f"{STREAMS}/{STREAMS}",
        f"{same}/{STREAMS}",
        same == STREAMS,
    )
    report.add(
        b,
        "slowest first token / lone stream's TTFT",
        f"<= {TARGET_TTFT:g}",
        f"x{m['ttft_ratio']:.1f} ({m['slowest_ttft_s'] * 1000:.0f} vs {m['lone_ttft_s'] * 1000:.0f} ms)",
        m["ttft_ratio"] <= TARGET_TTFT,
    )
    report.add(
        b,
        "  split: same 16 straight to the worker: aggregate / lone, slowest TTFT / lone",
        "report",
        f"x{m['direct_aggregate_tokens_per_s'] / m['lone_tokens_per_s']:.2f}, "
        f"x{m['direct_slowest_ttft_s'] / m['lone_ttft_s']:.1f} ({m['direct_slowest_ttft_s'] * 1000:.0f} ms); "
        f"same text {sum(m['direct_same_text'])}/{STREAMS}",
        None,
    )
    run_caches(report)


def engine_batching(path: Path, family: str, quantization: Quantization, tokens: int) -> dict[str, Any]:
    """16 greedy requests on one in-process engine: one after another, then all at once."""
    from shared.generation import GenerateRequest, GenerateResult, SamplingParams
    from shared.model_types import get_model_type
    from worker.model.engine import Engine

    engine = Engine.load(path, model_type=get_model_type(family), quantization=quantization, device="cpu")
    requests = [
        GenerateRequest(prompt=p, params=SamplingParams(temperature=0, max_new_tokens=tokens))
        for p in PROMPTS[:STREAMS]
    ]
    try:
        engine.generate(requests[0])  # warm-up
        alone = [engine.generate(r) for r in requests]
        together: list[GenerateResult | None] = [None] * STREAMS

        def run(i: int) -> None:
            together[i] = engine.generate(requests[i])

        threads = [threading.Thread(target=run, args=(i,)) for i in range(STREAMS)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
        batched = engine._scheduler is not None and engine._scheduler.batched
    finally:
        engine.close()
    done = [r for r in together if r is not None]
    lone_tps = median([r.completion_tokens / r.timings.total_s for r in alone])
    return {
        "batched": batched,
        "lone_tokens_per_s": lone_tps,
        "aggregate_tokens_per_s": sum(r.completion_tokens for r in done) / wall,
        "speedup": sum(r.completion_tokens for r in done) / wall / lone_tps,
        "same_text": sum(a.text == b.text for a, b in zip(alone, done, strict=True)),
    }


def run_caches(report: Report) -> None:
    from tests.support.tiny_models import ensure_tiny_model

    gemma3 = engine_batching(ensure_tiny_model("gemma", CACHE, **GEMMA3_SHAPE), "gemma", "none", TOKENS)
    # LLM.int8 on CPU is ~10x slower than float32: fewer tokens keep the row under half a minute.
    int8 = engine_batching(ensure_tiny_model("llama", CACHE, **MAIN_SHAPE), "llama", "8bit", TOKENS // 2)
    report.raw["batching_caches"] = {"gemma3": gemma3, "llama_8bit": int8}
    rows = (("Gemma 3-shaped, sliding window", gemma3, TARGET_CACHE_SPEEDUP), ("8-bit", int8, None))
    for name, m, target in rows:
        report.add(
            "batching",
            f"engine, {name}: {STREAMS} streams / one; same text",
            "report" if target is None else f">= {target:g}",
            f"x{m['speedup']:.2f} ({m['aggregate_tokens_per_s']:.0f} vs {m['lone_tokens_per_s']:.0f} tok/s, "
            f"{'batched' if m['batched'] else 'one at a time'}); same text {m['same_text']}/{STREAMS}",
            None if target is None else m["speedup"] >= target and m["same_text"] == STREAMS,
        )
