"""The CLI's client of a running Dukat: JSON calls and chat streams over HTTP, every failure turned
into one line (`CliError`) that `dukat` prints instead of a traceback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from shared.errors import SettingsError
from shared.settings import load_settings


class CliError(Exception):
    """A failure the CLI reports as one line on stderr, exiting non-zero."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def default_url() -> str:
    try:
        settings = load_settings()
    except SettingsError:
        return "http://127.0.0.1:8000"
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    return f"http://{host}:{settings.port}"


def client_key() -> str | None:
    """DUKAT_API_KEY, else (on the server's own machine) its first admin or inference key."""
    try:
        settings = load_settings()
    except SettingsError:
        return None
    return settings.api_key or next(iter(settings.admin_keys + settings.api_keys), None)


def _message(resp: httpx.Response) -> str:
    try:
        message = resp.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = resp.text.strip()[:300]
    return f"error ({resp.status_code}): {message}"


class Api:
    """One running Dukat, as `dukat list|ps|load|run|...` talk to it."""

    def __init__(self, url: str, api_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        key = api_key or client_key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=None)

    def _not_running(self, exc: httpx.HTTPError) -> CliError:
        if isinstance(exc, httpx.ConnectError):
            return CliError(
                f"error: Dukat is not running at {self.url} (start it with `dukat serve`, or give --url)"
            )
        return CliError(f"error: cannot reach Dukat at {self.url}: {type(exc).__name__}: {exc}")

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            resp = self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise self._not_running(exc) from None
        if resp.status_code >= 400:
            raise CliError(_message(resp))
        return resp.json()

    def chat_stream(self, body: dict[str, Any]) -> Iterator[str]:
        """The text pieces of a streamed chat completion, as they arrive."""
        try:
            with self._http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise CliError(_message(resp))
                for line in resp.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[len("data: ") :])
                    if "error" in event:  # a failure after the first chunk (OpenAI's error event)
                        raise CliError(f"error: {event['error'].get('message')}")
                    for choice in event.get("choices", []):
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            yield piece
        except httpx.HTTPError as exc:
            raise self._not_running(exc) from None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
