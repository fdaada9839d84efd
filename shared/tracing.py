"""OpenTelemetry traces (optional; off unless an OTLP endpoint is configured): a span per request in
the gateway, a child span per generation in the model worker, joined by W3C trace context carried on
the internal wire (`GenerateRequest.trace_context`).

On when `DUKAT_OTEL_ENDPOINT` (an OTLP/HTTP base URL, e.g. `http://collector:4318`) or OpenTelemetry's
own `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set. The SDK and the
exporter are an optional extra (`pip install 'dukat[otel]'`): without them a configured endpoint is
a warning at start, and nothing is traced. Each process keeps its own TracerProvider (no global one
is set); spans are exported in batches on the SDK's own thread.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

_OTEL_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


class Tracing:
    """A process's tracer, or nothing (`enabled` False: every call is a cheap no-op)."""

    def __init__(self, provider: Any | None, service: str) -> None:
        self._provider = provider
        self.tracer = provider.get_tracer(f"dukat.{service}") if provider is not None else None

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    @classmethod
    def configure(cls, endpoint: str, service: str, exporter: Any | None = None) -> Tracing:
        """Tracing to `endpoint` (or the OTEL_* variables), or to `exporter` (tests: an in-memory one,
        exported at once); off when neither is given."""
        configured = endpoint or any(os.environ.get(name) for name in _OTEL_ENDPOINTS)
        if exporter is None and not configured:
            return cls(None, service)
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        except ImportError:
            log.warning("an OTLP endpoint is set but OpenTelemetry's SDK is not installed "
                        "(pip install 'dukat[otel]'): no traces")  # fmt: skip
            return cls(None, service)
        provider = TracerProvider(resource=Resource.create({"service.name": f"dukat-{service}"}))
        if exporter is not None:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            # DUKAT_OTEL_ENDPOINT is a base URL, like OTEL_EXPORTER_OTLP_ENDPOINT: traces go to /v1/traces.
            url = f"{endpoint.rstrip('/')}/v1/traces" if endpoint else None
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
        return cls(provider, service)

    def start(self, name: str, parent: Mapping[str, str] | None = None) -> Any | None:
        """A started span (None when off), a child of the W3C `traceparent` in `parent` if any."""
        if self.tracer is None:
            return None
        from opentelemetry.propagate import extract

        context = extract(dict(parent)) if parent else None
        return self.tracer.start_span(name, context=context)

    def shutdown(self) -> None:
        """Export what is left (at the process's end)."""
        if self._provider is not None:
            self._provider.shutdown()


def carrier_of(span: Any | None) -> dict[str, str] | None:
    """`span`'s W3C trace context (`traceparent`) to hand to the next process (None: no span)."""
    if span is None:
        return None
    from opentelemetry import trace
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def end(span: Any | None, attributes: Mapping[str, Any], error: str | None = None) -> None:
    """Set `attributes` (None values left out) and end `span`; `error` marks it failed."""
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    span.set_attributes({k: v for k, v in attributes.items() if v is not None})
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end()
