"""vLLM's `/tokenize` and `/detokenize` against a served tiny model: round trips, chat messages counted
as a generation reads them, the generation prompt and special tokens as asked, clear 400s."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.gateway.conftest import Dukat

CHAT = "tiny/tinyllama"
HELLO = [{"role": "user", "content": "Say hi"}]


@pytest.fixture(scope="module")
def http(dukat: Dukat) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=dukat.url, timeout=120) as client:
        yield client


def _post(http: httpx.Client, path: str, body: dict) -> dict:
    resp = http.post(path, json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_a_prompt_round_trips(http: httpx.Client) -> None:
    text = "Hello world, café 日本"
    bare = _post(http, "/tokenize", {"model": CHAT, "prompt": text, "add_special_tokens": False})
    assert bare["count"] == len(bare["tokens"]) > 0 and bare["max_model_len"] == 512
    assert _post(http, "/detokenize", {"model": CHAT, "tokens": bare["tokens"]})["prompt"] == text
    special = _post(http, "/tokenize", {"model": CHAT, "prompt": text})
    assert special["tokens"][1:] == bare["tokens"] and special["count"] == bare["count"] + 1  # <s> first


def test_messages_count_what_a_chat_completion_reads(http: httpx.Client) -> None:
    counted = _post(http, "/tokenize", {"model": CHAT, "messages": HELLO})
    chat = _post(http, "/v1/chat/completions", {"model": CHAT, "messages": HELLO, "max_tokens": 1})
    assert counted["count"] == chat["usage"]["prompt_tokens"]
    without = _post(http, "/tokenize", {"model": CHAT, "messages": HELLO, "add_generation_prompt": False})
    assert 0 < without["count"] < counted["count"]
    assert counted["tokens"][: without["count"]] == without["tokens"]


def test_tools_are_rendered_through_the_template(http: httpx.Client) -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    plain = _post(http, "/tokenize", {"model": "tiny/hermes", "messages": HELLO})
    with_tools = _post(http, "/tokenize", {"model": "tiny/hermes", "messages": HELLO, "tools": [tool]})
    assert with_tools["count"] > plain["count"]


def test_a_history_call_with_a_huge_integer_argument_is_read(http: httpx.Client) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": {"x": 2**70}}}
    history = [*HELLO, {"role": "assistant", "tool_calls": [call]}, {"role": "tool", "tool_call_id": "call_1",
                                                                      "content": "ok"}]
    assert _post(http, "/tokenize", {"model": CHAT, "messages": history})["count"] > 0


def test_bad_requests_are_400s_naming_the_field(http: httpx.Client) -> None:
    neither = http.post("/tokenize", json={"model": CHAT})
    assert neither.status_code == 400 and neither.json()["error"]["param"] == "prompt"
    both = http.post("/tokenize", json={"model": CHAT, "prompt": "x", "messages": HELLO})
    assert both.status_code == 400
    foreign = http.post("/detokenize", json={"model": CHAT, "tokens": [1, 10**9]})
    assert foreign.status_code == 400 and foreign.json()["error"]["param"] == "tokens"
    assert "vocabulary" in foreign.json()["error"]["message"]


def test_metrics_count_requests_by_route_and_status(http: httpx.Client) -> None:
    _post(http, "/tokenize", {"model": CHAT, "prompt": "hi"})
    _post(http, "/v1/messages/count_tokens", {"model": CHAT, "messages": HELLO})
    assert http.post("/detokenize", json={"model": CHAT, "tokens": [-1]}).status_code == 400
    assert http.get("/v1/nothing-here").status_code == 404
    text = http.get("/metrics").text
    for method, route, status in [
        ("POST", "/tokenize", 200),
        ("POST", "/v1/messages/count_tokens", 200),
        ("POST", "/detokenize", 400),
        ("GET", "unmatched", 404),
    ]:
        line = f'dukat_http_requests_total{{method="{method}",route="{route}",status="{status}"}} '
        assert line in text, (line, [x for x in text.splitlines() if "http_requests" in x])
