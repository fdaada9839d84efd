"""`make bench-peer`: Dukat against the CPU peer, llama.cpp, on the same Gemma 3 270M weights, in one run.

The peer is llama-cpp-python's OpenAI server on the Q4_K_M GGUF, built by `../shared/peer/prepare.sh
OUT` (default OUT: `.peer` here, or `DUKAT_BENCH_PEER`); without it the peer rows say so and only
Dukat's rows run. Each server runs alone, one after the other, 2 threads each (`DUKAT_WORKER_THREADS`),
timed the same way as `../shared/peer/load.py` does it: `/v1/completions` at temperature 0, the best of
two lone requests of 64 tokens, then 8 at once. Dukat runs the GGUF's converted folder at each
quantization (`none`, `8bit`, `4bit`), reporting tok/s and the worker's memory, and the ratio to the
peer; then the last quantization again with DUKAT_OWN_DECODE_STEP=0 (the model's own forward, the
figures before worker/model/decode_step.py), and the peer once more (its figure is the mean of both
runs: this machine's speed drifts within a run). Targets (issue 22): one stream >= 1.0x the peer's,
8 streams >= 2x the peer's 8-stream total.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.harness import REPO_ROOT, RESULTS, SERVE_ENV, Served
from bench.real_model import CACHE, MODEL

THREADS = int(os.environ.get("DUKAT_WORKER_THREADS") or 2)
PEER = Path(os.environ.get("DUKAT_BENCH_PEER") or REPO_ROOT / ".peer")
TOKENS, CONCURRENCY = 64, 8
ENV = {**SERVE_ENV, "DUKAT_WORKER_THREADS": str(THREADS), "OMP_NUM_THREADS": str(THREADS)}


async def _one(client: httpx.AsyncClient, base: str, model: str, i: int) -> int:
    body = {"model": model, "prompt": f"Story {i}: Once upon a time, in a small village,",
            "max_tokens": TOKENS, "temperature": 0}
    r = await client.post(base + "/v1/completions", json=body)
    r.raise_for_status()
    return int(r.json()["usage"]["completion_tokens"])


async def _time(base: str, model: str) -> dict[str, float]:
    """load.py's measurement: warm once, the best of two lone requests, then CONCURRENCY at once."""
    async with httpx.AsyncClient(timeout=900) as client:
        await _one(client, base, model, 0)
        best = 0.0
        for _ in range(2):
            started = time.perf_counter()
            n = await _one(client, base, model, 1)
            best = max(best, n / (time.perf_counter() - started))
        started = time.perf_counter()
        counts = await asyncio.gather(*(_one(client, base, model, i) for i in range(CONCURRENCY)))
        return {"one": round(best, 1), "many": round(sum(counts) / (time.perf_counter() - started), 1)}


def peer_figures(gguf: Path) -> dict[str, float] | str:
    python = PEER / "lcp" / "bin" / "python"
    if not python.exists():
        return f"no peer at {PEER} (build it: ../shared/peer/prepare.sh {PEER})"
    port = "8091"
    cmd = [str(python), "-m", "llama_cpp.server", "--model", str(gguf), "--n_threads", str(THREADS),
           "--port", port, "--n_ctx", "2048"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        return asyncio.run(_time(base, "peer"))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def dukat_figures(quantizations: list[str], **env: str) -> dict[str, dict[str, Any]]:
    from bench.real_model import place

    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="dukat-peer-") as root:
        served = Served(Path(root), env={**ENV, **env})
        place(served.models_dir, converted=True)
        served.entries[MODEL] = {"description": "Gemma 3 270M base (bench)", "default_parameters": {},
                                 "model_type": "base"}
        from bench.harness import write_config

        write_config(served.config_path, served.entries, MODEL)
        served.start()
        try:
            for quantization in quantizations:
                loaded = served.load(MODEL, quantization=quantization)
                figures: dict[str, Any] = asyncio.run(_time(served.url, MODEL))
                figures["memory_mib"] = round(int(loaded.get("memory_bytes") or 0) / 2**20)
                out[quantization] = figures
                assert served.http is not None
                served.http.post("/api/models/unload", json={"model": MODEL}).raise_for_status()
        finally:
            served.stop()
    return out


def main() -> None:
    from gateway.cli.demo import gemma_file
    from shared.gguf import prepare

    gguf = gemma_file(CACHE)
    prepare(gguf, progress=print)  # converted once (cached), so no row pays it
    quantizations = sys.argv[1].split(",") if len(sys.argv) > 1 else ["none", "8bit", "4bit"]
    before = peer_figures(gguf)
    dukat = dukat_figures(quantizations)
    # The baseline of issue 22's change: the same load decoding on the model's own forward.
    dukat |= {f"{q} on the model's forward": f
              for q, f in dukat_figures(quantizations[-1:], DUKAT_OWN_DECODE_STEP="0").items()}
    after = peer_figures(gguf)  # the peer again: this machine's speed drifts within a run
    peer = before if isinstance(before, str) or isinstance(after, str) else {
        key: round((before[key] + after[key]) / 2, 1) for key in ("one", "many")}
    print(f"\nGemma 3 270M, {THREADS} threads each, {TOKENS} tokens, one after the other")
    if isinstance(peer, str):
        print(f"llama.cpp: {peer}")
    else:
        print(f"llama.cpp (Q4_K_M GGUF): one stream {peer['one']} tok/s, {CONCURRENCY} streams "
              f"{peer['many']} tok/s (mean of a run before Dukat's and one after: {before}, {after})")
    for quantization, f in dukat.items():
        line = (f"dukat {quantization:>4}: one stream {f['one']} tok/s, {CONCURRENCY} streams "
                f"{f['many']} tok/s, model {f['memory_mib']} MiB")
        if not isinstance(peer, str):
            line += (f"; vs llama.cpp: one x{f['one'] / peer['one']:.2f} (>= 1.0), {CONCURRENCY} streams "
                     f"x{f['many'] / peer['many']:.2f} (>= 2.0)")
        print(line)
    RESULTS.mkdir(parents=True, exist_ok=True)
    figures = {"peer": peer, "peer_runs": [before, after], "dukat": dukat, "threads": THREADS}
    (RESULTS / "peer.json").write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
