"""Recovery times of a model worker's faults, through a real `dukat serve` (`python -m bench.recovery`).

- kill -9 → next 200: the worker is killed between requests; the next chat completion is timed
  from the kill to its 200 (the host restarts the worker; the request waits for it).
- hang → error: a stream is in flight when its worker gets SIGSTOP; timed from the stop to the
  stream's error event (the host's ping deadline, then SIGKILL).
- hang → replaced worker serving: from the stop to the 200 of a request sent right after it.

Settings are the defaults except those printed; the tiny Llama of the tests is the model (a real
model adds its load time to the two restart figures).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from shared.processes import GATEWAY_READY, ChildProcess
from tests.support.tiny_models import ensure_tiny_model

MODEL = "bench/victim"
CACHE = Path(__file__).resolve().parent.parent / ".cache" / "tiny-models"


def serve(root: Path, env: dict[str, str]) -> tuple[ChildProcess, httpx.Client]:
    models = root / "models"
    shutil.copytree(ensure_tiny_model("llama", CACHE), models / MODEL)
    entry = {"description": "", "quantization": "none", "default_parameters": {}}
    (models / "config.json").write_text(json.dumps({"models": {MODEL: entry}}))
    proc = ChildProcess(
        "gateway.cli", ["serve", "--port", "0", "--models-dir", str(models)],
        ready_prefix=GATEWAY_READY, env={**env, "DUKAT_PRELOAD": MODEL, "DUKAT_LOG_LEVEL": "error"},
    )
    return proc, httpx.Client(base_url=proc.start(timeout=300), timeout=300)


def worker(http: httpx.Client) -> dict[str, Any]:
    return next(w for h in http.get("/api/hosts").json() for w in h["models"] if w["model_id"] == MODEL)


def chat(http: httpx.Client, max_tokens: int = 4, stream: bool = False) -> Any:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens,
            "stream": stream, "temperature": 1.0}
    return http.stream("POST", "/v1/chat/completions", json=body) if stream else http.post(
        "/v1/chat/completions", json=body
    )


def kill_to_next_200(http: httpx.Client) -> float:
    assert chat(http).status_code == 200
    pid = worker(http)["pid"]
    started = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    assert chat(http).status_code == 200
    return time.perf_counter() - started


def hang(http: httpx.Client) -> tuple[float, float]:
    pid = worker(http)["pid"]
    stopped, late = 0.0, []
    with chat(http, max_tokens=400, stream=True) as resp:
        lines = resp.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        os.kill(pid, signal.SIGSTOP)
        stopped = time.perf_counter()
        threading.Thread(target=lambda: late.append((chat(http).status_code, time.perf_counter()))).start()
        for line in lines:
            if line.startswith('data: {"error"'):
                break
        to_error = time.perf_counter() - stopped
    while not late:
        time.sleep(0.01)
    status, served_at = late[0]
    assert status == 200
    return to_error, served_at - stopped


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.recovery", description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ping-interval", default="5")
    p.add_argument("--ping-timeout", default="10")
    args = p.parse_args(argv)
    env = {
        "OMP_NUM_THREADS": "1", "DUKAT_WORKER_THREADS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "DUKAT_WORKER_PING_INTERVAL_S": args.ping_interval, "DUKAT_WORKER_PING_TIMEOUT_S": args.ping_timeout,
        "DUKAT_WORKER_RESTARTS": str(2 * args.rounds), "DUKAT_WORKER_RESTART_BACKOFF_S": "0",
    }
    print({k: v for k, v in env.items() if k.startswith("DUKAT_WORKER_")})
    with tempfile.TemporaryDirectory() as root:
        proc, http = serve(Path(root), env)
        try:
            kills = [kill_to_next_200(http) for _ in range(args.rounds)]
            hangs = [hang(http) for _ in range(args.rounds)]
        finally:
            proc.stop()
    rows = {
        "kill -9 -> next 200": kills,
        "hang -> error": [h[0] for h in hangs],
        "hang -> replaced worker serving": [h[1] for h in hangs],
    }
    for name, values in rows.items():
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"{name:34} median {statistics.median(values):6.2f} s   ({shown})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
