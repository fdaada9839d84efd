"""4. Load and unload.

Baseline: a fresh `python` process that imports torch and transformers and runs
`AutoTokenizer.from_pretrained` + `AutoModelForCausalLM.from_pretrained(dtype=float32)` on the same
folder, timed from spawn to exit (interpreter start, imports, tokenizer and weights). Through the
gateway: `POST /api/models/load` (quantization none, cpu) timed at the client, which adds the HTTP
hops, the host spawning the model worker, the engine's smoke forward pass and the readiness ping.

After `POST /api/models/unload` the worker's pid must be gone and the worker host's RSS back at its
baseline (taken after one warm-up load/unload, so one-time imports are not counted as a leak).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bench.harness import MAIN_MODEL, SERVE_ENV, Context, Report, Served, median

MEASURED_CYCLES = 2
RSS_TOLERANCE = 1.05  # host RSS after unload / baseline

_BARE = """
import sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.set_num_threads(1)
AutoTokenizer.from_pretrained(sys.argv[1])
AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
"""


def bare_load_seconds(path: Path) -> float:
    keys = ("OMP_NUM_THREADS", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS")
    env = {**os.environ, **{k: SERVE_ENV[k] for k in keys}}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", _BARE, str(path)], env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def cycle(served: Served, model: str) -> dict[str, Any]:
    """Load, note the worker, unload; check the worker has exited."""
    started = time.perf_counter()
    served.load(model)
    load_s = time.perf_counter() - started
    pid = served.worker_process(model).pid
    loaded_rss = served.tree_rss()
    served.unload(model)
    exited_at_return = _gone(pid)
    deadline = time.monotonic() + 5
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    return {
        "load_s": load_s,
        "worker_pid": pid,
        "exited_when_unload_returned": exited_at_return,
        "exited": _gone(pid),
        "tree_rss_loaded": loaded_rss,
        "host_rss_after": served.host_process().memory_info().rss,
        "tree_rss_after": served.tree_rss(),
    }


def run(ctx: Context, report: Report) -> None:
    served = ctx.served
    raw: dict[str, Any] = report.raw.setdefault("lifecycle", {})
    raw["bare_includes"] = (
        "interpreter start, import torch + transformers, tokenizer and model from_pretrained"
    )
    raw["warmup"] = cycle(served, MAIN_MODEL)  # also brings torch's files into the page cache
    host_rss0 = served.host_process().memory_info().rss
    tree_rss0 = served.tree_rss()
    raw["host_rss_baseline"], raw["tree_rss_baseline"] = host_rss0, tree_rss0
    bare: list[float] = []
    cycles: list[dict[str, Any]] = []
    for _ in range(MEASURED_CYCLES):  # alternating, so load from elsewhere hits both sides alike
        bare.append(bare_load_seconds(ctx.main_path))
        cycles.append(cycle(served, MAIN_MODEL))
    raw["bare_from_pretrained_s"], raw["cycles"] = bare, cycles

    bare_s = median(bare)
    load_s = median([c["load_s"] for c in cycles])
    limit = 1.2 * bare_s + 1.0
    b = "lifecycle"
    report.add(
        b,
        "load through the gateway vs bare from_pretrained",
        "<= 1.2 x bare + 1 s",
        f"{load_s:.2f} s vs bare {bare_s:.2f} s (x{load_s / bare_s:.2f}; limit {limit:.2f} s)",
        load_s <= limit,
    )
    exited = all(c["exited"] for c in cycles)
    report.add(b, "worker process exited after unload", "yes", "yes" if exited else "no", exited)
    host_ratio = max(c["host_rss_after"] for c in cycles) / host_rss0
    tree_ratio = max(c["tree_rss_after"] for c in cycles) / tree_rss0
    report.add(
        b,
        "worker host RSS after unload / baseline",
        f"<= {RSS_TOLERANCE:.2f}",
        f"x{host_ratio:.3f} ({host_rss0 / 2**20:.0f} MiB baseline); whole tree x{tree_ratio:.3f}, "
        f"loaded x{max(c['tree_rss_loaded'] for c in cycles) / tree_rss0:.2f}",
        host_ratio <= RSS_TOLERANCE,
    )
    served.load(MAIN_MODEL)  # the other benchmarks use it
