"""The first minute of `dukat serve`: a request sent the moment it answers, for a model it is still
preloading, waits for that model and is answered (never a 503, never "no worker host"), even with
auto-load off; the banner says the model is loading, then that it is ready; and the start-up log
holds no ERROR line and no traceback."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import openai

from shared.processes import GATEWAY_READY, ChildProcess
from tests.gateway.conftest import TEST_ENV
from tests.support.checks import wait_for

MODEL = "tiny/first-minute-llama"


def test_a_request_sent_while_its_model_preloads_waits_and_is_answered(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    models_dir = tmp_path / "models"
    shutil.copytree(tiny_model_dir("llama"), models_dir / MODEL)
    env = {**TEST_ENV, "DUKAT_PRELOAD": MODEL, "DUKAT_AUTO_LOAD": "false", "DUKAT_LOG_LEVEL": "info"}
    proc = ChildProcess(
        "gateway.cli", ["serve", "--port", "0", "--models-dir", str(models_dir)],
        ready_prefix=GATEWAY_READY, env=env,
    )  # fmt: skip
    url = proc.start(timeout=120)
    try:
        # A model worker takes seconds to import torch and load: this request comes before it is ready.
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=300)
        reply = client.completions.create(model=MODEL, prompt="Hello", max_tokens=3)
        assert reply.choices and reply.model == MODEL
        rows = httpx.get(f"{url}/api/ps", timeout=30).json()["data"]
        assert [(r["id"], r["state"]) for r in rows] == [(MODEL, "loaded")]
        # The banner says what is loading, then the log when it is ready.
        ready = f"ready: {MODEL} (loaded in"
        wait_for(lambda: any(ready in line for line in proc.lines), 30, "the ready line")
        log = "\n".join(proc.lines)
        assert "Dukat is serving" in log and f"Loading {MODEL}: requests for them wait" in log, log
        assert "Traceback" not in log and " ERROR " not in log, log
        assert "no worker host" not in log, log
    finally:
        proc.stop()
