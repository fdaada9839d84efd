"""The load generators: a minimal direct client of the model worker's msgpack wire (the baseline),
httpx for the gateway's HTTP API (requests and SSE streams) and wrk for throughput.

The direct client is written here on purpose, not taken from `shared/wire_client.py` (the
gateway's own client): it uses only the wire's frame format and decoders.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.harness import INTERNAL_TOKEN
from shared.generation import GenerateRequest, GenerateResult, Message, SamplingParams
from shared.wire import (
    Accepted,
    Delta,
    Error,
    Generate,
    Hello,
    Result,
    encode_frame,
    from_worker_decoder,
    read_frame,
)


def chat_body(model: str, prompt: str, max_tokens: int, *, stream: bool = False) -> dict[str, Any]:
    """The OpenAI request every benchmark sends: one user message, greedy."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def wire_request(prompt: str, max_tokens: int) -> GenerateRequest:
    """The same request as `chat_body`, as the gateway puts it on the wire."""
    return GenerateRequest(
        messages=[Message(role="user", content=prompt)],
        params=SamplingParams(temperature=0.0, max_new_tokens=max_tokens),
        request_id="bench",
    )


@dataclass
class Timed:
    """One request: seconds to the first content token (streams) and to the end, and its text."""

    first_s: float
    total_s: float
    text: str
    completion_tokens: int
    prompt_tokens: int = 0

    @classmethod
    def of_chat(cls, total_s: float, data: dict[str, Any]) -> Timed:
        """A whole (non-streamed) chat completion that took `total_s`."""
        usage = data["usage"]
        content = data["choices"][0]["message"]["content"] or ""
        return cls(total_s, total_s, content, usage["completion_tokens"], usage["prompt_tokens"])


class DirectClient:
    """One multiplexed connection to a model worker, like the gateway keeps, with no gateway."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._ids = itertools.count(1)
        self._queues: dict[int, asyncio.Queue[Any]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> DirectClient:
        host, _, port = self.address.rpartition(":")
        reader, self._writer = await asyncio.open_connection(host, int(port))
        self._writer.write(encode_frame(Hello(token=INTERNAL_TOKEN)))  # the worker asks for it first
        self._reader = asyncio.create_task(self._read(reader))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._reader is not None:
            self._reader.cancel()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while (payload := await read_frame(reader)) is not None:
            frame = from_worker_decoder.decode(payload)
            queue = self._queues.get(frame.id)
            if queue is not None:
                queue.put_nowait(frame)

    async def _frames(self, request: GenerateRequest, stream: bool) -> AsyncIterator[Delta | Result]:
        assert self._writer is not None
        rid = next(self._ids)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._queues[rid] = queue
        try:
            self._writer.write(encode_frame(Generate(id=rid, request=request, stream=stream)))
            while True:
                frame = await queue.get()
                if isinstance(frame, Error):
                    raise RuntimeError(f"worker error {frame.code}: {frame.message}")
                if isinstance(frame, Accepted):  # the worker has it; the answer follows
                    continue
                yield frame
                if isinstance(frame, Result):
                    return
        finally:
            self._queues.pop(rid, None)

    async def generate(self, request: GenerateRequest) -> Timed:
        started = time.perf_counter()
        result: GenerateResult | None = None
        async for frame in self._frames(request, stream=False):
            if isinstance(frame, Result):
                result = frame.result
        total = time.perf_counter() - started
        assert result is not None
        return Timed(total, total, result.text, result.completion_tokens, result.prompt_tokens)

    async def stream(self, request: GenerateRequest) -> Timed:
        started = time.perf_counter()
        first = 0.0
        parts: list[str] = []
        tokens = prompt_tokens = 0
        async for frame in self._frames(request, stream=True):
            if isinstance(frame, Delta):
                first = first or time.perf_counter() - started
                parts.append(frame.text)
            else:
                tokens, prompt_tokens = frame.result.completion_tokens, frame.result.prompt_tokens
        return Timed(first, time.perf_counter() - started, "".join(parts), tokens, prompt_tokens)


async def http_generate(client: httpx.AsyncClient, body: dict[str, Any]) -> Timed:
    started = time.perf_counter()
    r = await client.post("/v1/chat/completions", json=body)
    total = time.perf_counter() - started
    r.raise_for_status()
    return Timed.of_chat(total, r.json())


async def http_stream(client: httpx.AsyncClient, body: dict[str, Any]) -> Timed:
    """An SSE chat stream read as it arrives; `first_s` is the first chunk with content."""
    return await sse_timed(client, "/v1/chat/completions", body, lambda c: c["delta"].get("content"))


TextOf = Callable[[dict[str, Any]], str | None]


async def sse_timed(client: httpx.AsyncClient, path: str, body: dict[str, Any], text_of: TextOf) -> Timed:
    """An SSE stream read as it arrives: `first_s` is the first chunk with text (`text_of` a choice)."""
    started = time.perf_counter()
    first = 0.0
    parts: list[str] = []
    tokens = prompt_tokens = 0
    async with client.stream("POST", path, json=body) as r:
        if r.status_code >= 400:
            await r.aread()
            raise RuntimeError(f"{path} failed ({r.status_code}): {r.text}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"stream error: {chunk['error']}")
            for choice in chunk["choices"]:
                if text := text_of(choice):
                    first = first or time.perf_counter() - started
                    parts.append(text)
            if chunk.get("usage"):
                tokens, prompt_tokens = chunk["usage"]["completion_tokens"], chunk["usage"]["prompt_tokens"]
    return Timed(first, time.perf_counter() - started, "".join(parts), tokens, prompt_tokens)


class Probe:
    """A minimal HTTP/1.1 keep-alive client on one connection: the latency probe.

    httpx spends ~1.5 ms of client CPU per request here (request building, httpcore, anyio), which
    would count as gateway overhead; this probe costs about what the direct wire client costs, so the
    two paths are measured with equally thin clients. httpx and wrk are measured too, as cross-checks.
    """

    def __init__(self, url: str) -> None:
        hostport = url.removeprefix("http://").rstrip("/")
        self.host, _, port = hostport.rpartition(":")
        self.port = int(port)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Probe:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()

    def _send(self, path: str, body: dict[str, Any]) -> None:
        assert self._writer is not None
        payload = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        self._writer.write(head.encode() + payload)

    async def _head(self) -> dict[str, str]:
        assert self._reader is not None
        head = await self._reader.readuntil(b"\r\n\r\n")  # one await for the whole head
        status, *lines = head.decode("latin-1").split("\r\n")
        if not status.startswith("HTTP/1.1 200"):
            raise RuntimeError(f"gateway answered {status!r}")
        headers: dict[str, str] = {}
        for line in filter(None, lines):
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        return headers

    async def _chunks(self, headers: dict[str, str]) -> AsyncIterator[bytes]:
        """The body's pieces as they arrive (chunked transfer encoding or one Content-Length body)."""
        assert self._reader is not None
        if "content-length" in headers:
            yield await self._reader.readexactly(int(headers["content-length"]))
            return
        while True:
            size = int((await self._reader.readline()).split(b";")[0], 16)
            data = await self._reader.readexactly(size + 2)
            if size == 0:
                return
            yield data[:-2]

    async def generate(self, body: dict[str, Any]) -> Timed:
        started = time.perf_counter()
        self._send("/v1/chat/completions", body)
        parts = [chunk async for chunk in self._chunks(await self._head())]
        return Timed.of_chat(time.perf_counter() - started, json.loads(b"".join(parts)))

    async def stream(self, body: dict[str, Any]) -> Timed:
        started = time.perf_counter()
        self._send("/v1/chat/completions", body)
        first = 0.0
        buffer = b""
        texts: list[str] = []
        tokens = prompt_tokens = 0
        async for chunk in self._chunks(await self._head()):
            buffer += chunk
            *events, buffer = buffer.split(b"\n\n")
            for event in events:
                if not event.startswith(b"data: {"):
                    continue
                data = json.loads(event[6:])
                for choice in data.get("choices", ()):
                    if content := choice["delta"].get("content"):
                        first = first or time.perf_counter() - started
                        texts.append(content)
                if data.get("usage"):
                    tokens, prompt_tokens = data["usage"]["completion_tokens"], data["usage"]["prompt_tokens"]
        return Timed(first, time.perf_counter() - started, "".join(texts), tokens, prompt_tokens)


def http_client(url: str, connections: int = 1) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=url, timeout=300, limits=limits)


# ---- wrk ------------------------------------------------------------------------------------------

_WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open("%(body)s"):read("*a")
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_JSON {\\"requests\\": %%d, \\"duration_us\\": %%d, \\"connect\\": %%d, \\"read\\": %%d, " ..
    "\\"write\\": %%d, \\"status\\": %%d, \\"timeout\\": %%d, \\"p50_us\\": %%d, \\"p90_us\\": %%d, " ..
    "\\"p99_us\\": %%d, \\"max_us\\": %%d, \\"mean_us\\": %%f}\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


@dataclass
class LoadResult:
    """A fixed-duration load run: requests done, latency percentiles (µs) and the client's CPU."""

    tool: str
    requests: int
    seconds: float
    errors: int
    client_cpu_s: float
    latency_us: dict[str, float] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def run_load(url: str, body: dict[str, Any], *, connections: int, seconds: float) -> LoadResult:
    """POST `body` to /v1/chat/completions over `connections` keep-alive connections for `seconds`:
    with wrk where it is installed (`make bench` installs it), else with httpx (whose own CPU per
    request is then the likely limit; the gateway's CPU per request stays a fair figure)."""
    if shutil.which("wrk"):
        return _wrk(url, body, connections=connections, seconds=seconds)
    return asyncio.run(_httpx_load(url, body, connections=connections, seconds=seconds))


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _wrk(url: str, body: dict[str, Any], *, connections: int, seconds: float) -> LoadResult:
    with tempfile.TemporaryDirectory(prefix="dukat-wrk-") as tmp:
        body_path = Path(tmp) / "body.json"
        body_path.write_text(json.dumps(body))
        script = Path(tmp) / "post.lua"
        script.write_text(_WRK_SCRIPT % {"body": body_path})
        cmd = [
            "wrk",
            "-t",
            "1",
            "-c",
            str(connections),
            "-d",
            f"{max(1, round(seconds))}s",
            "--timeout",
            "30s",
            "-s",
            str(script),
            f"{url}/v1/chat/completions",
        ]
        cpu = _children_cpu()
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
        cpu = _children_cpu() - cpu
    line = next(x for x in out.splitlines() if x.startswith("WRK_JSON "))
    data = json.loads(line.removeprefix("WRK_JSON "))
    errors = sum(int(data[k]) for k in ("connect", "read", "write", "status", "timeout"))
    latency = {k: float(data[k]) for k in ("p50_us", "p90_us", "p99_us", "max_us", "mean_us")}
    return LoadResult("wrk", int(data["requests"]), data["duration_us"] / 1e6, errors, cpu, latency)


async def _httpx_load(url: str, body: dict[str, Any], *, connections: int, seconds: float) -> LoadResult:
    latencies: list[float] = []
    errors = 0
    async with http_client(url, connections) as client:
        deadline = time.perf_counter() + seconds

        async def loop() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                r = await client.post("/v1/chat/completions", json=body)
                latencies.append(time.perf_counter() - started)
                errors += r.status_code != 200

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(loop() for _ in range(connections)))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    us = sorted(x * 1e6 for x in latencies)

    def q(p: float) -> float:
        return us[min(len(us) - 1, int(len(us) * p / 100))] if us else float("nan")

    latency = {
        "p50_us": q(50),
        "p90_us": q(90),
        "p99_us": q(99),
        "max_us": us[-1] if us else float("nan"),
        "mean_us": sum(us) / len(us) if us else float("nan"),
    }
    return LoadResult("httpx", len(latencies), elapsed, errors, cpu, latency)
