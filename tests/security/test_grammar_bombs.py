"""Grammar bombs from an inference key against the locked server: each is a 400 naming what it
passed, within seconds, while other clients' streams on the same model worker finish normally and
the worker is neither replaced nor restarted."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx

from tests.security.conftest import ADMIN_KEY, CHAT_MODEL, INFERENCE_KEY, Locked


def strict(schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "bomb", "schema": schema, "strict": True}}


def chain(links: int) -> dict[str, Any]:
    defs: dict[str, Any] = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(links)}
    defs[f"d{links}"] = {"type": "string"}
    return {"$ref": "#/$defs/d0", "$defs": defs}


ENDLESS = {
    "$ref": "#/$defs/a",
    "$defs": {"a": {"type": "object", "properties": {"x": {"$ref": "#/$defs/a"}}, "required": ["x"]}},
}
# The issue's cases: (request fields, what the 400's message names).
BOMBS: dict[str, tuple[dict[str, Any], str]] = {
    "recursive $ref": ({"response_format": strict(ENDLESS)}, "no finite instance"),
    "minLength 10^9": ({"response_format": strict({"type": "string", "minLength": 10**9})}, "minLength"),
    "minItems 10^6": ({"response_format": strict({"type": "array", "minItems": 10**6})}, "minItems"),
    "20,000-link $ref chain": ({"response_format": strict(chain(20_000))}, "DUKAT_GRAMMAR_MAX_CHARS"),
    "100-link $ref chain": ({"response_format": strict(chain(100))}, "DUKAT_GRAMMAR_MAX_REF_CHAIN"),
    "10,000 optional properties": (
        {"response_format": strict({"type": "object", "properties": {f"p{i}": {} for i in range(10_000)}})},
        "DUKAT_GRAMMAR_MAX_CHARS",
    ),
    "2 MB const": ({"response_format": strict({"const": "x" * 2_000_000})}, "DUKAT_GRAMMAR_MAX_CHARS"),
    "(a{1000}){1000} regex": ({"structured_outputs": {"regex": "^(a{1000}){1000}$"}}, "repeats a part"),
    "200,000-value choice": (
        {"structured_outputs": {"choice": [f"c{i}" for i in range(200_000)]}},
        "DUKAT_GRAMMAR_MAX_CHOICES",
    ),
    "tool parameters with a required recursion": (
        {
            "tools": [{"type": "function", "function": {"name": "f", "parameters": ENDLESS, "strict": True}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
        },
        "no finite instance",
    ),
}


def worker_of(locked: Locked) -> dict[str, Any]:
    hosts = httpx.get(f"{locked.url}/api/hosts", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
    return next(w for h in hosts.json() for w in h["models"] if w["model_id"] == CHAT_MODEL)


def bystander(locked: Locked, results: list[tuple[str | None, bool]], done: threading.Event) -> None:
    """Another client's streams, one after the other until `done` (at least one): each one's
    finish reason, and whether an error event came."""
    stream_once(locked, results)
    while not done.is_set():
        stream_once(locked, results)


def stream_once(locked: Locked, results: list[tuple[str | None, bool]]) -> None:
    body = {
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": "go"}],
        "max_tokens": 48,
        "stream": True,
        "ignore_eos": True,
    }
    finish, failed = None, False
    with (
        locked.client("other-key") as client,
        client.stream("POST", "/v1/chat/completions", json=body) as resp,
    ):
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line.removeprefix("data: "))
            failed = failed or "error" in event
            for choice in event.get("choices", []):
                finish = choice.get("finish_reason") or finish
    results.append((finish, failed))


def test_grammar_bombs_are_400s_while_other_clients_streams_finish(locked: Locked) -> None:
    before = worker_of(locked)
    results: list[tuple[str | None, bool]] = []
    done = threading.Event()
    streams = [threading.Thread(target=bystander, args=(locked, results, done)) for _ in range(4)]
    for stream in streams:
        stream.start()
    with locked.client(INFERENCE_KEY) as client:
        # A served schema first: the worker's compile child is up (it starts with the first grammar).
        warm = {
            "model": CHAT_MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 16,
            "structured_outputs": {"choice": ["yes", "no"]},
        }
        assert client.post("/v1/chat/completions", json=warm).status_code == 200
        for name, (fields, named) in BOMBS.items():
            body = {
                "model": CHAT_MODEL,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 64,
                **fields,
            }
            started = time.monotonic()
            resp = client.post("/v1/chat/completions", json=body)
            assert resp.status_code == 400, (name, resp.status_code, resp.text[:300])
            error = resp.json()["error"]
            assert error["code"] == "invalid_request" and named in error["message"], (name, error)
            assert time.monotonic() - started < 10, name
    done.set()
    for stream in streams:
        stream.join(timeout=300)
    assert len(results) >= 4 and all(
        finish in ("length", "stop") and not failed for finish, failed in results
    ), results
    after = worker_of(locked)
    assert (after["pid"], after["restarts"]) == (before["pid"], before["restarts"])
