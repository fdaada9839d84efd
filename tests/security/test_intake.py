"""Large bodies are read in the gateway's intake process (gateway/intake.py) before this one decodes
them: a refusal there is the same 400 a small body gets, and a body within the limits is served."""

from __future__ import annotations

from pathlib import Path

import httpx
import msgspec
import psutil
import pytest

from gateway.intake import Intake
from gateway.limits import LARGE_BYTES
from shared.errors import OverloadedError
from shared.processes import kill_group
from shared.settings import Settings
from tests.gateway.conftest import TEST_ENV
from tests.security.conftest import CHAT_MODEL
from tests.support.served import dukat_serve


def chat(messages: list[dict[str, str]], **fields: object) -> dict[str, object]:
    return {"model": CHAT_MODEL, "messages": messages, "max_tokens": 1, **fields}


def test_a_large_body_over_a_limit_gets_the_small_body_refusal(inference: httpx.Client) -> None:
    over = [{"role": "user", "content": "hi"}] * 10_001
    large = inference.post("/v1/chat/completions", json=chat(over))
    assert len(httpx.Request("POST", "/", json=chat(over)).content) >= LARGE_BYTES
    assert large.status_code == 400, large.text
    assert large.json()["error"]["param"] == "messages"
    assert "DUKAT_MAX_MESSAGES" in large.json()["error"]["message"]


def test_a_large_body_within_the_limits_is_served(inference: httpx.Client) -> None:
    padding = "x" * LARGE_BYTES  # a field the answer ignores makes the body large
    hi = [{"role": "user", "content": "hi"}]
    reply = inference.post("/v1/chat/completions", json=chat(hi, user=padding))
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["role"] == "assistant"


def test_a_large_body_names_its_bad_field_as_a_small_one_does(inference: httpx.Client) -> None:
    hi = [{"role": "user", "content": "hi"}]
    small = inference.post("/v1/chat/completions", json=chat(hi, temperature="hot"))
    large = inference.post("/v1/chat/completions", json=chat(hi, temperature="hot", user="u" * LARGE_BYTES))
    assert small.status_code == large.status_code == 400
    assert small.json()["error"]["param"] == large.json()["error"]["param"]
    assert small.json()["error"]["message"] == large.json()["error"]["message"]


def test_large_bodies_read_at_once_are_bounded_in_bytes() -> None:
    intake = Intake(msgspec.structs.replace(Settings(), large_body_bytes=3 * LARGE_BYTES))
    with intake.room(LARGE_BYTES), intake.room(2 * LARGE_BYTES):
        with intake.room(LARGE_BYTES - 1):  # a small body counts nothing
            pass
        with pytest.raises(OverloadedError, match="DUKAT_LARGE_BODY_BYTES"), intake.room(LARGE_BYTES):
            pass
    with intake.room(3 * LARGE_BYTES):  # all given back
        pass


def test_the_intake_process_leaves_with_a_gateway_killed_by_sigkill(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    with dukat_serve(models_dir, {**TEST_ENV, "DUKAT_LOG_LEVEL": "warning"}) as (url, proc):
        big = {"model": "m", "messages": [{"role": "user", "content": "x" * LARGE_BYTES}]}
        assert httpx.post(f"{url}/v1/chat/completions", json=big, timeout=60).status_code == 404
        assert proc.proc is not None
        gateway = psutil.Process(proc.proc.pid)
        # The intake process, and the resource tracker its `spawn` context starts.
        spawned = [p for p in gateway.children() if "multiprocessing" in " ".join(p.cmdline())]
        assert any("spawn_main" in " ".join(p.cmdline()) for p in spawned), spawned
        # Its worker host lives in a session of its own: stopped here, since stop() finds the gateway
        # gone and signals no one.
        hosts = [p for p in gateway.children() if "worker.host" in p.cmdline()]
        gateway.kill()  # the gateway alone, not its process group
        try:
            _, alive = psutil.wait_procs(spawned, timeout=10)
            assert not alive
        finally:
            for host in hosts:
                kill_group(host.pid)
