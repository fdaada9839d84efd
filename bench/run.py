"""`make bench`: every benchmark in one run against one served Dukat; one table, one JSON file.

Order matters only for time: the load/unload benchmark runs first (it also loads the main model the
others use), growth last (it loads nine more workers).
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

from bench import batching, growth, lifecycle, overhead, streaming
from bench.harness import RESULTS, Context, Report, Served, bench_models, machine

BENCHMARKS: list[tuple[str, Callable[[Context, Report], None]]] = [
    ("lifecycle", lifecycle.run),
    ("overhead", overhead.run),
    ("streaming", streaming.run),
    ("batching", batching.run),
    ("growth", growth.run),
]


def table(report: Report) -> str:
    head = ("benchmark", "figure", "target", "measured", "result")
    rows = [(r.bench, r.name, r.target, r.measured, "-" if r.passed is None else "PASS" if r.passed else "FAIL")
            for r in report.rows]
    widths = [max(len(str(x[i])) for x in [head, *rows]) for i in range(len(head))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)), line]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(out)


def header(info: dict[str, object]) -> str:
    return (
        f"Dukat bench on {info['cpu_model']}: {info['logical_cores']} logical cores "
        f"({info['physical_cores']} physical), {info['memory_gib']} GiB; python {info['python']}, "
        f"torch {info['torch']}, transformers {info['transformers']}\n"
        f"threads: bench process OMP_NUM_THREADS={info['bench_process']['OMP_NUM_THREADS']} "  # type: ignore[index]
        f"(torch {info['bench_process']['torch_threads']}); served: "  # type: ignore[index]
        + ", ".join(f"{k}={v}" for k, v in info["served_env"].items())  # type: ignore[attr-defined]
        + " (gateway, host and every model worker)"
    )


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    started = time.perf_counter()
    only = set(argv if argv is not None else sys.argv[1:])
    report = Report()
    info = machine()
    print(header(info), flush=True)
    main_path, small_path = bench_models()
    report.raw.update({"machine": info, "models": {"main": str(main_path), "small": str(small_path)}})
    errors = 0
    with tempfile.TemporaryDirectory(prefix="dukat-bench-") as tmp:
        served = Served(Path(tmp))
        served.add_model(main_path, "bench/llama-256x4", "the measured tiny Llama (hidden 256, 4 layers)")
        ctx = Context(served=served, main_path=main_path, small_path=small_path, root=Path(tmp))
        try:
            served.start()
            for name, bench in BENCHMARKS:
                if only and name not in only:
                    continue
                print(f"== {name}", flush=True)
                t = time.perf_counter()
                try:
                    if name != "lifecycle" and not any(m["id"] == "bench/llama-256x4" for m in served.loaded()):
                        served.load("bench/llama-256x4")
                    bench(ctx, report)
                except Exception as exc:
                    errors += 1
                    traceback.print_exc()
                    report.add(name, "benchmark ran", "no error", f"{type(exc).__name__}: {exc}"[:120], False)
                report.raw.setdefault("seconds", {})[name] = time.perf_counter() - t
        finally:
            served.stop()
    total = time.perf_counter() - started
    report.raw["total_seconds"] = total
    report.raw["rows"] = [r.__dict__ for r in report.rows]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "latest.json"
    out.write_text(json.dumps(report.raw, indent=2, default=str))
    print()
    print(header(info))
    print(table(report))
    failed = sum(1 for r in report.rows if r.passed is False)
    print(f"\n{len(report.rows)} rows, {failed} missed targets, {errors} benchmark errors; {total:.0f} s; "
          f"raw figures in {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
