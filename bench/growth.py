"""5. Growth: the gateway's routing cost with 100 configured models and 10 loaded, against one.

The one-client, whole-reply overhead of benchmark 1 (probe against direct, alternating;
max_tokens=1) is measured on the main model with one model configured and loaded; then again after
99 more entries were added to the config file (their folders present: hard links of the smallest
tiny Llama) and 9 of them loaded (9 more worker processes, one torch thread each); then once more
back at one model. The baseline is the mean of the two one-model medians, so drift during the run
shows up as their spread.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.harness import MAIN_MODEL, Context, Report, config_entry, place_model, write_config
from bench.overhead import one_client

CONFIGURED = 100
LOADED = 10
PAIRS = 400
TOKENS = 1  # routing cost does not depend on the reply; short requests give more pairs
TARGET = 1.05
LOAD_PARALLEL = 2


def _overhead(ctx: Context) -> dict[str, Any]:
    served = ctx.served
    time.sleep(0.5)  # let the loads' aftermath settle
    address = served.worker_address(MAIN_MODEL)
    return asyncio.run(one_client(served.url, address, MAIN_MODEL, PAIRS, stream=False, tokens=TOKENS))


def _only_main(ctx: Context) -> None:
    served = ctx.served
    for model in served.loaded():
        if model["id"] != MAIN_MODEL:
            served.unload(model["id"])
    served.entries = {MAIN_MODEL: served.entries[MAIN_MODEL]}
    write_config(served.config_path, served.entries, MAIN_MODEL)


def run(ctx: Context, report: Report) -> None:
    served = ctx.served
    raw: dict[str, Any] = report.raw.setdefault("growth", {})
    _only_main(ctx)
    one_a = _overhead(ctx)

    extras = [f"bench/extra-{i:03d}" for i in range(CONFIGURED - 1)]
    for model_id in extras:
        place_model(ctx.small_path, served.models_dir, model_id)
        served.entries[model_id] = config_entry("growth benchmark extra")
    write_config(served.config_path, served.entries, MAIN_MODEL)
    started = time.perf_counter()
    with ThreadPoolExecutor(LOAD_PARALLEL) as pool:
        list(pool.map(served.load, extras[: LOADED - 1]))
    raw["load_9_extras_s"] = time.perf_counter() - started
    loaded = [m["id"] for m in served.loaded() if m["state"] == "loaded"]
    raw["loaded"], raw["configured"] = len(loaded), len(served.entries)
    raw["tree_rss_mib"] = served.tree_rss() / 2**20
    many = _overhead(ctx)

    _only_main(ctx)
    one_b = _overhead(ctx)
    raw["one_model_before"], raw["many_models"], raw["one_model_after"] = one_a, many, one_b
    base = (one_a["added_median_ms"] + one_b["added_median_ms"]) / 2
    ratio = many["added_median_ms"] / base if base > 0 else float("inf")
    raw["ratio"] = ratio
    report.add(
        "growth",
        f"added median, {raw['configured']} configured + {len(loaded)} loaded / 1 model",
        f"<= {TARGET:.2f}",
        f"x{ratio:.2f} ({many['added_median_ms']:.2f} vs {one_a['added_median_ms']:.2f}, "
        f"{one_b['added_median_ms']:.2f} ms)",
        ratio <= TARGET and len(loaded) == LOADED,
    )
