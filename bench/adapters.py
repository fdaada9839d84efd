"""LoRA adapters: 8 concurrent greedy streams over 4 adapters against 8 on the base model.

In process, on the engine the model worker runs (its scheduler and own decode step), the main
bench Llama (256 x 4 layers) with four rank-8 adapters on every projection. Each side runs its 8
requests one after another first (their text alone, and a warm-up), then all 8 at once; the figure
is the adapters' aggregate tokens/s over the base's. Each adapter row's text together must equal
its text alone.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.batching import PROMPTS
from bench.harness import CACHE, MAIN_SHAPE, Context, Report

STREAMS = 8
ADAPTERS = 4
TOKENS = 64
TARGET = 0.7


def _together(engine: Any, requests: list[Any]) -> tuple[list[Any], float]:
    results: list[Any] = [None] * len(requests)

    def run(i: int) -> None:
        results[i] = engine.generate(requests[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - started


def measure() -> dict[str, Any]:
    from shared.generation import GenerateRequest, SamplingParams
    from shared.model_types import get_model_type
    from tests.support.tiny_adapters import ALL_PROJECTIONS, build_tiny_adapter
    from tests.support.tiny_models import ensure_tiny_model
    from worker.model.engine import Engine

    base = ensure_tiny_model("llama", CACHE, **MAIN_SHAPE)
    with tempfile.TemporaryDirectory() as root:
        ids = [f"lora-{i}" for i in range(ADAPTERS)]
        for i, adapter_id in enumerate(ids):
            build_tiny_adapter(base, Path(root) / adapter_id, base_id="base", seed=i, r=8,
                               targets=ALL_PROJECTIONS, init_std=0.05)  # fmt: skip
        engine = Engine.load(base, model_type=get_model_type("llama"), quantization="none", device="cpu",
                             models_dir=Path(root), max_loras=ADAPTERS)  # fmt: skip
        params = SamplingParams(temperature=0, max_new_tokens=TOKENS, ignore_eos=True)
        sides = {
            "base": [GenerateRequest(prompt=p, params=params) for p in PROMPTS[:STREAMS]],
            "adapters": [
                GenerateRequest(prompt=p, params=params, adapter=ids[i % ADAPTERS])
                for i, p in enumerate(PROMPTS[:STREAMS])
            ],
        }
        out: dict[str, Any] = {}
        try:
            alone = {name: [engine.generate(r) for r in requests] for name, requests in sides.items()}
            for name in [*sides, *sides]:  # alternated, twice: the best of each (a shared machine)
                together, wall = _together(engine, sides[name])
                tps = sum(r.completion_tokens for r in together) / wall
                same = sum(a.text == b.text for a, b in zip(alone[name], together, strict=True))
                before = out.get(name, {"aggregate_tokens_per_s": 0.0, "same_text": STREAMS})
                out[name] = {
                    "aggregate_tokens_per_s": max(tps, before["aggregate_tokens_per_s"]),
                    "same_text": min(same, before["same_text"]),
                }
        finally:
            engine.close()
    out["ratio"] = out["adapters"]["aggregate_tokens_per_s"] / out["base"]["aggregate_tokens_per_s"]
    return out


def run(ctx: Context, report: Report) -> None:
    m = measure()
    report.raw["adapters"] = m
    same = m["adapters"]["same_text"]
    report.add(
        "adapters",
        f"engine, {STREAMS} streams over {ADAPTERS} LoRA adapters / {STREAMS} on the base; same text",
        f">= {TARGET:g}",
        f"x{m['ratio']:.2f} ({m['adapters']['aggregate_tokens_per_s']:.0f} vs "
        f"{m['base']['aggregate_tokens_per_s']:.0f} tok/s); same text {same}/{STREAMS}",
        m["ratio"] >= TARGET and same == STREAMS,
    )


if __name__ == "__main__":
    import json

    print(json.dumps(measure(), indent=2))
