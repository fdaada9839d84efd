"""`make bench`: every benchmark in one run against one served Dukat; one table, one JSON file.

Order matters only for time: the load/unload benchmark runs first (it leaves the main model loaded
for the others), growth last (it starts nine more model workers). `python -m bench.run overhead`
runs only the named benchmarks.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import adapters, batching, growth, hostile, lifecycle, overhead, streaming, structured
from bench.harness import MAIN_MODEL, RESULTS, Context, CpuMeter, Report, Served, bench_models, machine

BENCHMARKS: list[tuple[str, Callable[[Context, Report], None]]] = [
    ("lifecycle", lifecycle.run),
    ("overhead", overhead.run),
    ("streaming", streaming.run),
    ("batching", batching.run),
    ("adapters", adapters.run),
    ("structured", structured.run),
    ("growth", growth.run),
    ("hostile", hostile.run),
]
NOISY = 0.10  # share of the machine used by other processes above which a benchmark is flagged


def table(report: Report, others: dict[str, float]) -> str:
    head = ("benchmark", "figure", "target", "measured", "result")
    rows = []
    for r in report.rows:
        result = "-" if r.passed is None else "PASS" if r.passed else "FAIL"
        flag = "*" if others.get(r.bench, 0.0) > NOISY else ""
        rows.append((r.bench + flag, r.name, r.target, r.measured, result))
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [head, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def header(info: dict[str, Any]) -> str:
    served = ", ".join(f"{k}={v}" for k, v in info["served_env"].items())
    return (
        f"Dukat bench on {info['cpu_model']}: {info['logical_cores']} logical cores "
        f"({info['physical_cores']} physical), {info['memory_gib']} GiB; python {info['python']}, "
        f"torch {info['torch']}, transformers {info['transformers']}\n"
        f"threads: bench process OMP_NUM_THREADS={info['bench_process']['OMP_NUM_THREADS']} "
        f"(torch threads {info['bench_process']['torch_threads']}); gateway, worker host and every "
        f"model worker: {served}"
    )


def run_all(report: Report, only: set[str]) -> tuple[int, dict[str, float]]:
    """Run the benchmarks against one served instance; returns (errors, others' share per bench)."""
    main_path, small_path = bench_models()
    report.raw["models"] = {"main": str(main_path), "small": str(small_path)}
    errors = 0
    others: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="dukat-bench-") as tmp:
        served = Served(Path(tmp))
        served.add_model(main_path, MAIN_MODEL, "the measured tiny Llama (hidden 256, 4 layers)")
        ctx = Context(served=served, main_path=main_path, small_path=small_path, root=Path(tmp))
        meter = CpuMeter(served)
        try:
            served.start()
            for name, bench in BENCHMARKS:
                if only and name not in only:
                    continue
                print(f"== {name}", flush=True)
                mark = meter.mark()
                try:
                    if name != "lifecycle" and not any(m["id"] == MAIN_MODEL for m in served.loaded()):
                        served.load(MAIN_MODEL)
                    bench(ctx, report)
                except Exception as exc:
                    errors += 1
                    traceback.print_exc()
                    report.add(name, "benchmark ran", "no error", f"{type(exc).__name__}: {exc}"[:160], False)
                cpu = meter.since(mark)
                report.raw.setdefault("cpu", {})[name] = cpu
                others[name] = cpu["others_share"]
        finally:
            served.stop()
    return errors, others


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    started = time.perf_counter()
    only = set(sys.argv[1:] if argv is None else argv)
    report = Report()
    info = machine()
    report.raw["machine"] = info
    print(header(info), flush=True)
    errors, others = run_all(report, only)
    total = time.perf_counter() - started
    report.raw["total_seconds"] = total
    report.raw["rows"] = [r.__dict__ for r in report.rows]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "latest.json"
    out.write_text(json.dumps(report.raw, indent=2, default=str))

    print()
    print(header(info))
    print(table(report, others))
    print(
        "\nCPU used by other processes during each benchmark (share of the whole machine): "
        + ", ".join(f"{k} {v:.0%}" for k, v in others.items())
    )
    if any(v > NOISY for v in others.values()):
        print(f"* ran while other processes used more than {NOISY:.0%} of the machine: figures are skewed")
    failed = sum(1 for r in report.rows if r.passed is False)
    print(
        f"{len(report.rows)} rows, {failed} missed targets, {errors} benchmark errors; {total:.0f} s; "
        f"raw figures in {out}"
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
