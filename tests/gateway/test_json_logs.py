"""DUKAT_LOG_FORMAT=json: a real `dukat serve` (gateway, its worker host, a model worker) writes one JSON
object a line on stderr, every process its own (flat, not wrapped by its parent), and a request's
access line carries its request id, model, key name (never the secret), status and timings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.gateway.conftest import TEST_ENV, write_models
from tests.support.checks import wait_for

CHAT = "tiny/tinyllama"
SECRET = "sk-json-logs-secret"


def test_every_process_logs_one_json_object_a_line(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    write_models(models_dir, tiny_model_dir, {CHAT: "tinyllama"})
    env = {
        **os.environ, **TEST_ENV, "PYTHONUNBUFFERED": "1",
        "DUKAT_LOG_FORMAT": "json", "DUKAT_LOG_LEVEL": "info",
        "DUKAT_API_KEYS": f"team-a:{SECRET}", "DUKAT_PRELOAD": CHAT,
    }  # fmt: skip
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--port", "0", "--models-dir", str(models_dir)],
            stdout=stdout, stderr=stderr, env=env, start_new_session=True,
        )  # fmt: skip
    try:
        ready = wait_for(lambda: _ready_port(out), 120, "the gateway's ready line")
        url = f"http://127.0.0.1:{ready}"
        wait_for(lambda: _status(f"{url}/health/ready") == 200, 120, "the preload")
        with openai.OpenAI(base_url=f"{url}/v1", api_key=SECRET, max_retries=0, timeout=120) as client:
            client.chat.completions.create(
                model=CHAT, messages=[{"role": "user", "content": "hi"}], max_tokens=3,
                extra_headers={"X-Request-Id": "json-log-test-1"},
            )  # fmt: skip
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)

    text = err.read_text()
    assert SECRET not in text
    records = [_object(line) for line in text.splitlines() if line.strip()]
    for record in records:
        assert {"time", "level", "logger", "process", "pid", "message"} <= record.keys(), record
    ours = [r for r in records if r.get("request_id") == "json-log-test-1"]
    access = [r for r in ours if r["logger"] == "gateway.access"]
    assert len(access) == 1, records
    line = access[0]
    assert (line["process"], line["model"], line["key"], line["status"]) == ("gateway", CHAT, "team-a", 200)
    assert line["method"] == "POST" and line["path"] == "/v1/chat/completions"
    assert line["duration_ms"] >= line["first_byte_ms"] > 0
    # The worker host's own lines, and the model worker's, each as its own object.
    loaded = [r for r in records if r["process"] == "worker_host" and r["message"].startswith("loaded ")]
    assert loaded and loaded[0]["model"] == CHAT and loaded[0]["load_seconds"] >= 0
    assert any(r["process"] == "model_worker" for r in records), {r["process"] for r in records}
    assert len({r["pid"] for r in records}) >= 2


def _object(line: str) -> dict[str, Any]:
    try:
        found = json.loads(line)
    except json.JSONDecodeError:
        pytest.fail(f"not a JSON line: {line!r}")
    assert isinstance(found, dict), line
    return found


def _ready_port(stdout: Path) -> int | None:
    for line in stdout.read_text().splitlines():
        if line.startswith("DUKAT_GATEWAY_READY "):
            return int(line.split()[1])
    return None


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.HTTPError:
        return 0
