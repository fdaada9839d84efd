"""OpenTelemetry traces (shared/tracing.py): the gateway's span per request (in an in-memory
exporter: the app in process, its worker host and model worker real processes) with the model,
the tokens and the status, a child of the client's `traceparent`; the model worker's span exported
over real OTLP/HTTP to a receiver here, a child of the gateway's span; off unless configured."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
from litestar.testing import TestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.app import create_app
from shared.settings import load_settings
from shared.tracing import Tracing
from tests.support.checks import wait_for

MODEL = "tiny/llama"
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"


class _Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver: every span it was sent, decoded."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[Any] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: _Receiver

    def do_POST(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/traces":
            export = ExportTraceServiceRequest.FromString(body)
            for resource in export.resource_spans:
                for scope in resource.scope_spans:
                    self.server.spans.extend(scope.spans)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def receiver() -> Iterator[_Receiver]:
    server = _Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def traced(
    tiny_model_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory, receiver: _Receiver
) -> Iterator[tuple[openai.OpenAI, TestClient, InMemorySpanExporter]]:
    models = tmp_path_factory.mktemp("traced") / "models"
    shutil.copytree(tiny_model_dir("llama"), models / MODEL)
    (models / "config.json").write_text(json.dumps({"models": {MODEL: {"quantization": "none"}}}))
    spans = InMemorySpanExporter()
    with pytest.MonkeyPatch.context() as env:
        # The local host and its worker read these (the worker exports every 0.2 s).
        env.setenv("DUKAT_WORKER_THREADS", "1")
        env.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
        settings = load_settings({}, {"models_dir": str(models), "otel_endpoint": receiver.url})
        with TestClient(create_app(settings, span_exporter=spans), timeout=120) as client:
            base_url = f"{client.base_url}/v1"
            sdk = openai.OpenAI(base_url=base_url, api_key="unused", http_client=client, max_retries=0)
            yield sdk, client, spans


def test_a_request_is_a_span_with_its_model_tokens_and_status_and_its_worker_span_a_child(
    traced: tuple[openai.OpenAI, TestClient, InMemorySpanExporter], receiver: _Receiver
) -> None:
    sdk, _, spans = traced
    spans.clear()
    traceparent = f"00-{CLIENT_TRACE}-b7ad6b7169203331-01"
    reply = sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=5, temperature=0,
        extra_headers={"traceparent": traceparent},
    )  # fmt: skip
    [span] = spans.get_finished_spans()
    assert span.name == "POST /v1/chat/completions"
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.request.model"] == MODEL
    assert attributes["http.response.status_code"] == 200
    assert reply.usage is not None
    assert attributes["gen_ai.usage.input_tokens"] == reply.usage.prompt_tokens
    assert attributes["gen_ai.usage.output_tokens"] == reply.usage.completion_tokens
    assert format(span.context.trace_id, "032x") == CLIENT_TRACE  # the client's trace goes on
    assert span.parent is not None and format(span.parent.span_id, "016x") == "b7ad6b7169203331"

    def worker_span() -> Any:
        return next((s for s in receiver.spans if s.trace_id.hex() == CLIENT_TRACE), None)

    child = wait_for(worker_span, 20, "the model worker's span reaches the OTLP receiver")
    assert child.name == "generate"
    assert child.parent_span_id.hex() == format(span.context.span_id, "016x")
    worker_attributes = {a.key: a.value for a in child.attributes}
    assert worker_attributes["gen_ai.usage.output_tokens"].int_value == reply.usage.completion_tokens


def test_a_failed_request_is_a_span_with_its_status(
    traced: tuple[openai.OpenAI, TestClient, InMemorySpanExporter],
) -> None:
    _, client, spans = traced
    spans.clear()
    assert client.post("/v1/chat/completions", json={"model": "ghost", "messages": []}).status_code >= 400
    [span] = spans.get_finished_spans()
    assert dict(span.attributes or {})["http.response.status_code"] >= 400


def test_tracing_is_off_unless_an_endpoint_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert not Tracing.configure("", "gateway").enabled
    assert Tracing.configure("http://127.0.0.1:9", "gateway").enabled
