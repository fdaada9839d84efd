"""The gateway's loop only waits: while other clients send multi-MB request bodies, a normal client's
small request stays within 2x its idle latency (medians, measured in the same test), plus a little for
the CPU the attack itself takes from this 2-core machine.

The attackers run in their own process, so their bodies cost this test's client nothing. Measured on
this machine before the intake process (gateway/intake.py): 4-8x idle under the 50,000-item Responses
input, 2.4-5x under 9 MB of tool descriptions (27.7 s median before the input list was linear)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.security.conftest import CHAT_MODEL, INFERENCE_KEY, LONG_MODEL, Locked

SMALL = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
FACTOR, SLACK_S = 2.0, 0.02
# A client posting one body again and again, printing each status.
ATTACKER = """
import sys, httpx
url, path, key, body = sys.argv[1], sys.argv[2], sys.argv[3], open(sys.argv[4], "rb").read()
headers = {"Authorization": "Bearer " + key, "Content-Type": "application/json"}
with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
    while True:
        print(client.post(path, content=body).status_code, flush=True)
"""


def median_latency(client: httpx.Client, count: int = 16, every_s: float = 0.25) -> float:
    """Small requests sent at a steady rate (not one after another: a stall of the loop then delays
    every request sent during it, not just one), their median latency."""

    def one() -> float:
        started = time.perf_counter()
        assert client.post("/v1/chat/completions", json=SMALL).status_code == 200
        return time.perf_counter() - started

    with ThreadPoolExecutor(count) as pool:
        futures = []
        for _ in range(count):
            futures.append(pool.submit(one))
            time.sleep(every_s)
        return statistics.median(f.result() for f in futures)


def responses_input() -> tuple[str, dict[str, object]]:
    part = {"type": "input_text", "text": "hello there " * 2}
    item = {"type": "message", "role": "user", "content": [part]}
    return "/v1/responses", {"model": LONG_MODEL, "input": [item] * 50_000, "max_output_tokens": 1}


def chat_messages() -> tuple[str, dict[str, object]]:
    hi = {"role": "user", "content": "hi"}
    return "/v1/chat/completions", {**SMALL, "model": LONG_MODEL, "messages": [hi] * 100_000}


def tool_descriptions() -> tuple[str, dict[str, object]]:
    described = {"name": "f", "description": "word " * 1_800_000, "parameters": {}}
    tool = {"type": "function", "function": described}
    return "/v1/chat/completions", {**SMALL, "tools": [tool]}


@pytest.mark.slow
@pytest.mark.parametrize("attack", [responses_input, chat_messages, tool_descriptions])
def test_a_normal_request_stays_near_its_idle_latency_while_huge_bodies_arrive(
    locked: Locked, tmp_path: Path, attack: Callable[[], tuple[str, dict[str, object]]]
) -> None:
    path, body = attack()
    body_file = tmp_path / "body.json"
    body_file.write_bytes(json.dumps(body).encode())
    args = [sys.executable, "-c", ATTACKER, locked.url, path, INFERENCE_KEY, str(body_file)]
    with locked.client(INFERENCE_KEY) as client:
        median_latency(client, 2)  # warm
        idle = median_latency(client)
        attackers = [subprocess.Popen(args, stdout=subprocess.PIPE, text=True) for _ in range(2)]
        try:
            time.sleep(1.5)  # the first bodies are in
            busy = median_latency(client)
        finally:
            for attacker in attackers:
                attacker.kill()
        sent = {line.strip() for attacker in attackers for line in attacker.communicate()[0].splitlines()}
    assert sent == {"400"}, sent  # refused by a request limit, in the intake process
    assert busy < FACTOR * idle + SLACK_S, (idle, busy)


def test_huge_tool_descriptions_are_refused_by_the_character_bound(locked: Locked) -> None:
    """Counted before tokenizing (a 9 MB one cost the worker 7.5 s to reach its context error)."""
    with locked.client(INFERENCE_KEY) as inference:
        reply = inference.post("/v1/chat/completions", json=tool_descriptions()[1])
    assert reply.status_code == 400
    assert "DUKAT_MAX_PROMPT_CHARS" in reply.json()["error"]["message"]
