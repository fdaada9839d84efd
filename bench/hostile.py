"""19. One client cannot hurt the others: a normal chat's latency while other clients send what the
hostile corpus holds at its largest, against its latency idle, in the same run.

Its own `dukat serve` with two models: the normal client's small chats (1 token) go to the main bench
Llama, the attacks to a second tiny Llama, so what is measured is the gateway (and the CPU the attack
takes from the machine), not a shared batch. Attackers run in their own processes, two at a time,
each sending its request again and again: a 50,000-item Responses input (5.5 MB), 100,000 one-word
chat messages (3.5 MB), 9 MB of tool descriptions, 128 token-id prompts (9 MB), and an n=16 answer
of 150 tokens with 20 alternatives each (~3.5 MB of logprobs, built off the loop). Small chats go out
every 50 ms for 4 s of each attack; the figures are their median and slowest against idle, and how
many attacks were answered meanwhile. Target: median <= 2x idle.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench.harness import MAIN_MODEL, Context, Report, Served, median

ATTACKED = "bench/attacked"
SMALL = {"model": MAIN_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
TARGET = 2.0
WINDOW_S = 4.0
EVERY_S = 0.05
# One client posting one body again and again.
ATTACKER = """
import sys, httpx
url, path, body = sys.argv[1], sys.argv[2], open(sys.argv[3], "rb").read()
with httpx.Client(base_url=url, headers={"Content-Type": "application/json"}, timeout=600) as client:
    while True:
        print(client.post(path, content=body).status_code, flush=True)
"""


def attacks() -> dict[str, tuple[str, dict[str, Any]]]:
    hi = {"role": "user", "content": "hi"}
    part = {"type": "input_text", "text": "hello there " * 2}
    item = {"type": "message", "role": "user", "content": [part]}
    described = {"name": "f", "description": "word " * 1_800_000, "parameters": {}}
    return {
        "50,000-item Responses input": (
            "/v1/responses", {"model": ATTACKED, "input": [item] * 50_000, "max_output_tokens": 1}),
        "100,000 chat messages": (
            "/v1/chat/completions", {"model": ATTACKED, "messages": [hi] * 100_000, "max_tokens": 1}),
        "9 MB of tool descriptions": (
            "/v1/chat/completions", {**SMALL, "model": ATTACKED, "tools": [{"type": "function",
                                                                          "function": described}]}),
        "128 token-id prompts, 9 MB": (
            "/v1/completions", {"model": ATTACKED, "prompt": [[1] * 17_000] * 128, "max_tokens": 1}),
        "n=16 answers, 20 logprobs a token": (
            "/v1/chat/completions", {"model": ATTACKED, "messages": [hi], "max_tokens": 150, "n": 16,
                                     "logprobs": True, "top_logprobs": 20, "temperature": 1.0,
                                     "min_tokens": 150}),
    }  # fmt: skip


def latencies(url: str) -> list[float]:
    """Small chats sent at a steady rate for the window, their latencies."""

    def one() -> float:
        started = time.perf_counter()
        client.post("/v1/chat/completions", json=SMALL).raise_for_status()
        return time.perf_counter() - started

    with httpx.Client(base_url=url, timeout=120) as client, ThreadPoolExecutor(16) as pool:
        futures = []
        for _ in range(int(WINDOW_S / EVERY_S)):
            futures.append(pool.submit(one))
            time.sleep(EVERY_S)
        return [f.result() for f in futures]


def measure(ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dukat-hostile-") as tmp:
        served = Served(Path(tmp))
        served.add_model(ctx.main_path, MAIN_MODEL, "the normal client's model")
        served.add_model(ctx.small_path, ATTACKED, "the attacked model")
        served.start()
        try:
            served.load(MAIN_MODEL)
            served.load(ATTACKED)
            latencies(served.url)  # warm
            idle = latencies(served.url)
            out["idle"] = {"median_s": median(idle), "max_s": max(idle)}
            for name, (path, body) in attacks().items():
                body_file = Path(tmp) / "body.json"
                body_file.write_bytes(json.dumps(body).encode())
                args = [sys.executable, "-c", ATTACKER, served.url, path, str(body_file)]
                procs = [subprocess.Popen(args, stdout=subprocess.PIPE, text=True) for _ in range(2)]
                try:
                    time.sleep(1.5)  # the first bodies are in (or the answer is being generated)
                    busy = latencies(served.url)
                finally:
                    for proc in procs:
                        proc.kill()
                answered = [line.strip() for proc in procs for line in proc.communicate()[0].splitlines()]
                size = body_file.stat().st_size
                out[name] = {"median_s": median(busy), "max_s": max(busy), "body_bytes": size,
                             "answered": answered}  # fmt: skip
        finally:
            served.stop()
    return out


def run(ctx: Context, report: Report) -> None:
    m = measure(ctx)
    report.raw["hostile"] = m
    idle = m["idle"]["median_s"]
    for name, figures in m.items():
        if name == "idle":
            continue
        ratio = figures["median_s"] / idle
        report.add(
            "hostile",
            f"normal chat during {name}: median / idle",
            f"<= {TARGET:g}",
            f"x{ratio:.1f} ({figures['median_s'] * 1000:.0f} vs {idle * 1000:.0f} ms; slowest "
            f"{figures['max_s'] * 1000:.0f} ms; {len(figures['answered'])} attacks answered)",
            ratio <= TARGET,
        )
