"""What every benchmark shares: the machine, statistics, result rows, the bench models and a served
Dukat (`dukat serve` as a child process with its own models_dir and config file).

Nothing here is gateway code: the served instance is started the way a user starts it, and the
clients (see `clients.py`) are httpx, the openai SDK, wrk and a minimal wire client of our own.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import secrets
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from shared.processes import GATEWAY_READY, ChildProcess

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE = REPO_ROOT / ".cache" / "tiny-models"
RESULTS = Path(__file__).resolve().parent / "results"

# The measured model: big enough that a forward pass is real work, small enough for 2 cores.
MAIN_MODEL = "bench/llama-256x4"
MAIN_SHAPE: dict[str, Any] = {"hidden": 256, "layers": 4, "init_std": 0.5}
# The extra loaded models of the growth benchmark: the smallest tiny Llama.
SMALL_SHAPE: dict[str, Any] = {"hidden": 64, "layers": 2, "init_std": 0.5}

# Every process of the served instance runs one torch thread; the access log is off (warning).
# The served host and workers ask for an internal token; the bench's own clients of them send it.
INTERNAL_TOKEN = secrets.token_urlsafe(24)
SERVE_ENV = {
    "DUKAT_INTERNAL_TOKEN": INTERNAL_TOKEN,
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "DUKAT_WORKER_THREADS": "1",
    "DUKAT_LOG_LEVEL": "warning",
    "DUKAT_DEVICE_MAP": "cpu",
    "DUKAT_DEFAULT_QUANTIZATION": "none",
    "DUKAT_STOP_TIMEOUT_S": "5",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


# ---- statistics ------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summary_ms(values_s: Sequence[float]) -> dict[str, float]:
    """Median, p90, p99, mean and count of latencies given in seconds, in milliseconds."""
    ms = [v * 1000 for v in values_s]
    return {
        "n": len(ms),
        "median_ms": median(ms),
        "p90_ms": pct(ms, 90),
        "p99_ms": pct(ms, 99),
        "mean_ms": statistics.fmean(ms) if ms else float("nan"),
        "min_ms": min(ms, default=float("nan")),
    }


# ---- results -------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table: what is measured, against what target, and whether it passes.
    `passed` is None for figures that are reported without a target."""

    bench: str
    name: str
    target: str
    measured: str
    passed: bool | None


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def add(self, bench: str, name: str, target: str, measured: str, passed: bool | None) -> None:
        self.rows.append(Row(bench, name, target, measured, passed))
        mark = "-" if passed is None else "PASS" if passed else "FAIL"
        print(f"  [{bench}] {name}: {measured} (target {target}) {mark}", flush=True)


# ---- the machine ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch
    import transformers

    return {
        "cpu_model": model,
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "bench_process": {
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "torch_threads": torch.get_num_threads(),
        },
        "served_env": {
            k: SERVE_ENV[k] for k in ("OMP_NUM_THREADS", "DUKAT_WORKER_THREADS", "DUKAT_LOG_LEVEL")
        },
    }


# ---- models ---------------------------------------------------------------------------------------


def bench_models() -> tuple[Path, Path]:
    """(the measured tiny Llama, the smallest tiny Llama), built once under .cache/."""
    from tests.support.tiny_models import ensure_tiny_model

    return ensure_tiny_model("llama", CACHE, **MAIN_SHAPE), ensure_tiny_model("llama", CACHE, **SMALL_SHAPE)


def place_model(source: Path, models_dir: Path, model_id: str) -> Path:
    """A model folder at models_dir/<model_id>: hard links to `source` (no copying of weights)."""
    dest = models_dir / model_id
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source, dest, copy_function=os.link)
    return dest


def config_entry(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "quantization": "none",
        "default_parameters": {},
        "model_type": "llama",
    }


def write_config(config_path: Path, entries: dict[str, dict[str, Any]], default: str | None) -> None:
    """The model config file, written atomically (the gateway re-reads it when it changes)."""
    tmp = config_path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"models": entries, "default_model": default}, indent=2))
    os.replace(tmp, config_path)


# ---- a served Dukat -----------------------------------------------------------------------------


class Served:
    """`dukat serve --port 0 --models-dir DIR` with a config file naming the models placed there."""

    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        self.env = env or SERVE_ENV
        self.models_dir = root / "models"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.models_dir / "config.json"
        self.entries: dict[str, dict[str, Any]] = {}
        self.process: ChildProcess | None = None
        self.url = ""
        self.http: httpx.Client | None = None

    def add_model(self, source: Path, model_id: str, description: str = "bench model") -> None:
        place_model(source, self.models_dir, model_id)
        self.entries[model_id] = config_entry(description)
        write_config(self.config_path, self.entries, MAIN_MODEL if MAIN_MODEL in self.entries else None)

    def start(self) -> None:
        args = ["serve", "--port", "0", "--models-dir", str(self.models_dir)]
        self.process = ChildProcess("gateway.cli", args, ready_prefix=GATEWAY_READY, env=self.env)
        self.url = self.process.start(timeout=120)
        self.http = httpx.Client(base_url=self.url, timeout=300)

    def stop(self) -> None:
        if self.http is not None:
            self.http.close()
        if self.process is not None:
            self.process.stop()

    # -- management API --

    def load(self, model_id: str, quantization: str = "none", device: str = "cpu") -> dict[str, Any]:
        assert self.http is not None
        r = self.http.post(
            "/api/models/load", json={"model": model_id, "quantization": quantization, "device": device}
        )
        r.raise_for_status()
        result: dict[str, Any] = r.json()
        return result

    def unload(self, model_id: str) -> None:
        assert self.http is not None
        self.http.post("/api/models/unload", json={"model": model_id}).raise_for_status()

    def loaded(self) -> list[dict[str, Any]]:
        assert self.http is not None
        r = self.http.get("/api/ps")
        r.raise_for_status()
        result: list[dict[str, Any]] = r.json()["data"]
        return result

    def worker_address(self, model_id: str) -> str:
        """The model worker's wire address, as its host reports it."""
        for model in self.loaded():
            if model["id"] == model_id:
                auth = {"authorization": f"Bearer {INTERNAL_TOKEN}"}
                state = httpx.get(f"{model['host']}/state", headers=auth, timeout=30).json()
                for worker in state["models"]:
                    if worker["model_id"] == model_id:
                        return str(worker["address"])
        raise RuntimeError(f"{model_id} is not loaded")

    # -- processes --

    def worker_process(self, model_id: str) -> psutil.Process:
        for model in self.loaded():
            if model["id"] == model_id and model["pid"]:
                return psutil.Process(model["pid"])
        raise RuntimeError(f"{model_id} has no worker process")

    def tree_rss(self) -> int:
        """Resident memory of the gateway and every process under it (host, model workers)."""
        gw = self.gateway_process
        total = 0
        for proc in [gw, *gw.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        return total

    @property
    def gateway_process(self) -> psutil.Process:
        assert self.process is not None and self.process.proc is not None
        return psutil.Process(self.process.proc.pid)

    def host_process(self) -> psutil.Process:
        """The local worker host that `dukat serve` started (the gateway process's child)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for child in self.gateway_process.children():
                if "worker.host" in " ".join(child.cmdline()):
                    return child
            time.sleep(0.05)
        raise RuntimeError("the gateway has no worker host child")


@dataclass
class Context:
    """What the benchmarks share: the served instance and the model folders."""

    served: Served
    main_path: Path
    small_path: Path
    root: Path


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


class CpuMeter:
    """How much of the machine other processes used while a benchmark ran: the machine's busy CPU
    time minus ours (this process, its reaped children such as wrk, and the served process tree).
    Other work on a 2-core machine (a test suite, an editor's indexer) skews every figure; the
    table states it per benchmark so a reader can tell a miss from a noisy run."""

    def __init__(self, served: Served) -> None:
        self.served = served

    def _ours(self) -> float:
        total = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            r = resource.getrusage(who)
            total += r.ru_utime + r.ru_stime
        if self.served.process is not None and self.served.process.alive():
            gw = self.served.gateway_process
            for proc in [gw, *gw.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    t = proc.cpu_times()
                    total += t.user + t.system + t.children_user + t.children_system
        return total

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return float(sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal")))

    def mark(self) -> tuple[float, float, float]:
        return time.perf_counter(), self._busy(), self._ours()

    def since(self, mark: tuple[float, float, float]) -> dict[str, float]:
        wall, busy, ours = (now - then for now, then in zip(self.mark(), mark, strict=True))
        cores = os.cpu_count() or 1
        return {
            "wall_s": wall,
            "machine_busy_cpu_s": busy,
            "ours_cpu_s": ours,
            "others_share": max(0.0, busy - ours) / (wall * cores) if wall > 0 else 0.0,
        }
