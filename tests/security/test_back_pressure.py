"""Back-pressure: a stream whose client reads nothing stops generating after a bounded number of
tokens (the gateway's buffers, DUKAT_STREAM_BUFFER_EVENTS, and the kernel's, bounded too) and is
cancelled after DUKAT_STREAM_STALL_TIMEOUT_S; other clients are served meanwhile."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit

from tests.security.conftest import (
    CHAT_MODEL,
    INFERENCE_KEY,
    LONG_CONTEXT,
    LONG_MODEL,
    STREAM_STALL_S,
    Locked,
)

MAX_TOKENS = LONG_CONTEXT - 96


def long_stream(max_tokens: int) -> dict[str, object]:
    return {
        "model": LONG_MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
        "min_tokens": max_tokens,  # no early end of sequence
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
    }


def open_unread_stream(url: str, body: dict[str, object]) -> socket.socket:
    """A streaming request from a client with a tiny receive window that then reads nothing."""
    parts = urlsplit(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((parts.hostname, parts.port))
    payload = json.dumps(body).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: dukat\r\nConnection: close\r\n"
        f"Authorization: Bearer {INFERENCE_KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    sock.sendall(head.encode() + payload)
    return sock


def read_events(sock: socket.socket) -> list[dict[str, object]]:
    """Everything the server sent, as the JSON of its `data:` events (each event is within one
    chunk of the chunked body, so the chunks' size lines fall between events)."""
    sock.settimeout(60)
    raw = b""
    while chunk := sock.recv(65536):
        raw += chunk
    events = []
    for part in raw.split(b"data: ")[1:]:
        data = part.split(b"\n\n")[0]
        if data != b"[DONE]":
            events.append(json.loads(data))
    return events


def test_a_stream_nobody_reads_stops_generating_and_is_cancelled(locked: Locked) -> None:
    sock = open_unread_stream(locked.url, long_stream(MAX_TOKENS))
    try:
        started = time.monotonic()
        time.sleep(1.0)
        with locked.client(INFERENCE_KEY) as other:  # served while the stalled stream waits
            small = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            assert other.post("/v1/chat/completions", json=small).status_code == 200
        time.sleep(max(0.0, STREAM_STALL_S + 2.0 - (time.monotonic() - started)))
        events = read_events(sock)
    finally:
        sock.close()
    # One event a token (a few tokens when a character spans them): unpaused, the worker would have
    # made thousands before the stall timeout and they would all be here.
    chunks = [event for event in events if event.get("choices")]
    assert 0 < len(chunks) < MAX_TOKENS // 4, len(chunks)
    assert events[-1]["error"]["code"] == "stream_stalled"  # type: ignore[index]


def test_a_paused_stream_resumes_where_it_stopped(locked: Locked) -> None:
    """A client that reads late: its row left the batch and came back (its tokens prefilled
    again), and its greedy text is the text of the same request read at once."""
    sock = open_unread_stream(locked.url, long_stream(1500))
    try:
        time.sleep(1.5)  # its buffers fill (~700 tokens) and it pauses; reading resumes it
        events = read_events(sock)
    finally:
        sock.close()
    assert events[-1]["choices"][0]["finish_reason"] == "length"  # type: ignore[index]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)  # type: ignore[index]
    with locked.client(INFERENCE_KEY) as client:
        whole = client.post("/v1/chat/completions", json={**long_stream(1500), "stream": False}).json()
    assert text == whole["choices"][0]["message"]["content"]
