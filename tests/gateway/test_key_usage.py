"""Named keys, their usage and their limits, through the real `openai` SDK against a real `dukat serve`:
keys from DUKAT_API_KEYS (`name:secret`) and from a keys file, usage in /api/usage and /metrics (by
name, never the secret), and 429s with Retry-After and `x-ratelimit-*` headers for limited keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.gateway.conftest import TEST_ENV, write_models
from tests.support.checks import error_of, wait_for
from tests.support.hub_server import HubServer
from tests.support.served import dukat_serve

CHAT = "tiny/tinyllama"
HELLO = [{"role": "user", "content": "What is the capital of France?"}]
ADMIN = "sk-ops-secret"
TEAM_A = "sk-team-a-secret"
KEYS_FILE = {
    "keys": [
        {"name": "rpm-2", "key": "sk-rpm-secret", "requests_per_minute": 2},
        {"name": "tpm-10", "key": "sk-tpm-secret", "tokens_per_minute": 10},
        {"name": "one-at-a-time", "key": "sk-conc-secret", "max_concurrent": 1},
    ]
}


@pytest.fixture(scope="module")
def served(
    tiny_model_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory, session_hub: HubServer
) -> Iterator[str]:
    models_dir = tmp_path_factory.mktemp("keys") / "models"
    models_dir.mkdir()
    write_models(models_dir, tiny_model_dir, {CHAT: "tinyllama"})
    keys_file = models_dir.parent / "keys.json"
    keys_file.write_text(json.dumps(KEYS_FILE))
    env = {
        **TEST_ENV,
        "HF_ENDPOINT": session_hub.url,
        "HF_HOME": str(models_dir.parent / "hf-home"),
        "DUKAT_LOG_LEVEL": "warning",
        "DUKAT_API_KEYS": f"team-a:{TEAM_A},sk-unnamed-secret",
        "DUKAT_ADMIN_KEYS": f"ops:{ADMIN}",
        "DUKAT_KEYS_FILE": str(keys_file),
        "DUKAT_PRELOAD": CHAT,
    }
    with dukat_serve(models_dir, env) as (url, _):
        yield url


def sdk(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


def chat(client: openai.OpenAI, **kwargs: Any) -> Any:
    return client.chat.completions.create(model=CHAT, messages=HELLO, max_tokens=4, temperature=0, **kwargs)


def usage_of(url: str, name: str) -> dict[str, Any]:
    rows = httpx.get(f"{url}/api/usage", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30).json()
    return next(row for row in rows["data"] if row["key"] == name)


def test_usage_per_named_key_counts_requests_and_tokens(served: str) -> None:
    before = usage_of(served, "team-a")
    with sdk(served, TEAM_A) as client:
        reply = chat(client)
        stream = chat(client, stream=True, stream_options={"include_usage": True})
        streamed = list(stream)[-1].usage  # the usage chunk comes last
    after = usage_of(served, "team-a")
    assert after["requests"] == before["requests"] + 2
    prompt = reply.usage.prompt_tokens + streamed.prompt_tokens
    assert after["prompt_tokens"] - before["prompt_tokens"] == prompt
    completion = reply.usage.completion_tokens + streamed.completion_tokens
    assert after["completion_tokens"] - before["completion_tokens"] == completion
    assert after["role"] == "inference" and after["in_flight"] == 0


def test_metrics_name_keys_and_never_show_secrets(served: str) -> None:
    with sdk(served, TEAM_A) as client:
        chat(client)
    text = httpx.get(f"{served}/metrics", timeout=30).text
    assert 'dukat_key_requests_total{key="team-a"}' in text
    assert 'dukat_key_completion_tokens_total{key="team-a"}' in text
    assert 'dukat_key_requests_total{key="rpm-2"}' in text
    # An unnamed key is named by a hash prefix; no secret appears anywhere.
    assert 'dukat_key_requests_total{key="key-' in text
    for secret in (TEAM_A, ADMIN, "sk-unnamed-secret", "sk-rpm-secret"):
        assert secret not in text


def test_usage_needs_an_admin_key(served: str) -> None:
    resp = httpx.get(f"{served}/api/usage", headers={"Authorization": f"Bearer {TEAM_A}"}, timeout=30)
    error_of(resp, 403, "permission_denied")


def test_requests_per_minute_limit_is_a_429_with_openai_headers(served: str) -> None:
    with sdk(served, "sk-rpm-secret") as client:
        first = client.chat.completions.with_raw_response.create(model=CHAT, messages=HELLO, max_tokens=2)
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        assert first.headers["x-ratelimit-reset-requests"].endswith("s")
        chat(client)
        with pytest.raises(openai.RateLimitError) as caught:
            chat(client)
    resp = caught.value.response
    error = error_of(resp, 429, "rate_limit_exceeded")
    assert error["type"] == "rate_limit_error" and "2 requests per minute" in error["message"]
    assert 1 <= int(resp.headers["retry-after"]) <= 60
    assert resp.headers["x-ratelimit-remaining-requests"] == "0"
    row = usage_of(served, "rpm-2")
    assert row["requests"] == 2 and row["rate_limited"]["requests"] == 1
    assert row["limits"]["requests_per_minute"] == 2


def test_tokens_per_minute_limit_counts_what_requests_used(served: str) -> None:
    with sdk(served, "sk-tpm-secret") as client:
        reply = chat(client)  # the prompt alone is over 10 tokens
        assert reply.usage.total_tokens > 10
        with pytest.raises(openai.RateLimitError) as caught:
            chat(client)
    resp = caught.value.response
    error_of(resp, 429, "rate_limit_exceeded")
    assert resp.headers["x-ratelimit-limit-tokens"] == "10"
    assert resp.headers["x-ratelimit-remaining-tokens"] == "0"
    assert int(resp.headers["retry-after"]) >= 1


def test_concurrent_limit_refuses_a_second_request_while_a_stream_is_open(served: str) -> None:
    with sdk(served, "sk-conc-secret") as client:
        # 400 tokens, none of them an end (min_tokens), read no further than the first: the stream
        # is still open (generating, then paused by back-pressure) when the second request comes.
        # 16 tokens could all be sent, and the place freed, before it.
        stream = client.chat.completions.create(
            model=CHAT, messages=HELLO, max_tokens=400, temperature=0, stream=True,
            extra_body={"min_tokens": 400},
        )
        next(iter(stream))  # the stream is open and holds the key's one place
        with pytest.raises(openai.RateLimitError) as caught:
            chat(client)
        assert "1 requests in flight" in caught.value.response.json()["error"]["message"]
        stream.close()
        wait_for(lambda: usage_of(served, "one-at-a-time")["in_flight"] == 0, 30, "the stream's place freed")
        reply = chat(client)  # the place is free again once the stream ended
    assert reply.choices[0].message.content is not None
    assert usage_of(served, "one-at-a-time")["rate_limited"]["concurrent"] == 1


def test_a_bad_keys_file_stops_start_up_naming_the_setting(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    keys_file.write_text('{"keys": [{"name": "a", "key": "sk-1", "tokens_per_minute": 0}]}')
    env = {**os.environ, **TEST_ENV, "DUKAT_KEYS_FILE": str(keys_file)}
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", "0", "--models-dir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "DUKAT_KEYS_FILE" in done.stderr and "tokens_per_minute" in done.stderr
    assert "Traceback" not in done.stderr
