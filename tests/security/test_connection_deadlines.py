"""Idle and trickling HTTP connections are closed: a request head (request line and headers) must
arrive within 10 s of the connection or of the request's first byte, on the gateway and on the
worker host alike."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import httpx

from tests.security.conftest import ADMIN_KEY, Locked


def closed_after(url: str, trickle: bytes) -> float:
    """Seconds until the server closes a connection that sends `trickle` one byte every 2 s."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
        started = time.monotonic()
        for byte in trickle:
            sock.sendall(bytes([byte]))
            sock.settimeout(2)
            try:
                if sock.recv(1) == b"":
                    return time.monotonic() - started
            except TimeoutError:
                continue
            except ConnectionResetError:
                return time.monotonic() - started
        sock.settimeout(60)
        assert sock.recv(1) == b""
        return time.monotonic() - started


def test_idle_and_slowloris_connections_are_closed_at_the_head_deadline(locked: Locked) -> None:
    hosts = httpx.get(f"{locked.url}/api/hosts", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
    for url in (locked.url, hosts.json()[0]["url"]):
        assert 9 < closed_after(url, b"") < 20, url  # silent
        assert 9 < closed_after(url, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 30) < 20, url
        assert httpx.get(f"{url}/health", timeout=30).status_code == 200
