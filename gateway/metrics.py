"""The gateway's Prometheus metrics, in a registry of its own (built by the app factory, one per app).

Two kinds:
- what this gateway sees, counted as requests finish: vLLM's names where the meaning matches
  (`vllm:time_to_first_token_seconds`, `vllm:e2e_request_latency_seconds`, ...), labelled
  `model_name`, so dashboards built for vLLM work; each gateway replica exports its own.
- what the worker hosts report (models and their state, memory, restarts, downloads), read from
  the hosts' state when Prometheus scrapes: nothing on the request path.

The request path pays one call per finished request (`ModelMetrics.finished`), with the label
values bound once per model.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.generation import GenerateResult
from shared.host_api import HostState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MODEL = ("model_name",)
# vLLM's buckets, so its dashboards' quantiles read the same.
TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
E2E_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)
ITL_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
OVERHEAD_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
LOAD_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
FINISH_REASONS = ("stop", "length", "cancelled")


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Time to first token (as the gateway sees it).",
            MODEL,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Request latency from dispatch to the last token.",
            MODEL,
            buckets=E2E_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "Mean time between tokens of a request.",
            MODEL,
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prompt tokens processed.", MODEL, registry=r)
        self.generation_tokens = Counter("vllm:generation_tokens", "Tokens generated.", MODEL, registry=r)
        self.success = Counter(
            "vllm:request_success",
            "Requests finished, by finish reason.",
            (*MODEL, "finished_reason"),
            registry=r,
        )
        self.overhead = Histogram(
            "dukat_gateway_overhead_seconds",
            "Latency a request spends outside its model worker's engine (wire, loop hops).",
            MODEL,
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.rejections = Counter(
            "dukat_queue_rejections",
            "Requests refused because a worker's queue was full (429).",
            MODEL,
            registry=r,
        )
        self.load_duration = Histogram(
            "dukat_model_load_duration_seconds",
            "Seconds model workers took to load.",
            MODEL,
            buckets=LOAD_BUCKETS,
            registry=r,
        )
        self.waiting = Gauge(
            "vllm:num_requests_waiting",
            "Requests at this gateway waiting for their model to load.",
            MODEL,
            registry=r,
        )
        self.hosts = HostsCollector()
        r.register(self.hosts)
        self._models: dict[str, ModelMetrics] = {}

    def for_model(self, model_id: str) -> ModelMetrics:
        """The request path's handle for `model_id` (label values bound once)."""
        found = self._models.get(model_id)
        if found is None:
            found = self._models[model_id] = ModelMetrics(self, model_id)
        return found

    def render(self, hosts: list[HostState], host_urls: list[str], in_flight: dict[str, int]) -> bytes:
        """The exposition text, with the hosts' state and this gateway's requests in flight as of now."""
        self.hosts.update(hosts, host_urls, in_flight)
        return generate_latest(self.registry)


class ModelMetrics:
    """One model's metric children; `finished` is what the request path calls."""

    __slots__ = ("_e2e", "_gen", "_itl", "_overhead", "_prompt", "_rejections", "_success", "_ttft")

    def __init__(self, m: GatewayMetrics, model_id: str) -> None:
        self._ttft, self._e2e, self._itl = (
            m.ttft.labels(model_id),
            m.e2e.labels(model_id),
            m.itl.labels(model_id),
        )
        self._prompt, self._gen = m.prompt_tokens.labels(model_id), m.generation_tokens.labels(model_id)
        self._success = {reason: m.success.labels(model_id, reason) for reason in FINISH_REASONS}
        self._overhead, self._rejections = m.overhead.labels(model_id), m.rejections.labels(model_id)

    def finished(self, result: GenerateResult, elapsed_s: float, first_token_s: float | None) -> None:
        """A generation ended: `elapsed_s` from dispatch to its result, `first_token_s` to its first
        streamed text (None when not streamed: the worker's own first-token time stands in)."""
        t, tokens = result.timings, result.completion_tokens
        self._prompt.inc(result.prompt_tokens)
        self._gen.inc(tokens)
        self._success[result.finish_reason].inc()
        self._e2e.observe(elapsed_s)
        outside = max(elapsed_s - t.total_s, 0.0)
        self._ttft.observe(first_token_s if first_token_s is not None else t.first_token_s + outside)
        if tokens > 1:
            self._itl.observe((t.total_s - t.first_token_s) / (tokens - 1))
        self._overhead.observe(outside)

    def embedded(self, prompt_tokens: int, elapsed_s: float) -> None:
        self._prompt.inc(prompt_tokens)
        self._success["stop"].inc()
        self._e2e.observe(elapsed_s)

    def rejected(self) -> None:
        self._rejections.inc()


class HostsCollector(Collector):
    """Figures the worker hosts report, as of the gateway's last read of their state."""

    def __init__(self) -> None:
        self._hosts: list[HostState] = []
        self._urls: list[str] = []
        self._in_flight: dict[str, int] = {}

    def update(self, hosts: list[HostState], urls: list[str], in_flight: dict[str, int]) -> None:
        self._hosts, self._urls, self._in_flight = hosts, urls, in_flight

    def describe(self) -> list[Metric]:
        return []  # families vary with the hosts; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        running = GaugeMetricFamily(
            "vllm:num_requests_running", "Requests this gateway has on model workers.", labels=MODEL
        )
        for model_id, count in sorted(self._in_flight.items()):
            running.add_metric([model_id], count)
        yield running
        up = GaugeMetricFamily(
            "dukat_host_up", "1 when the worker host answered its last state read.", labels=["host"]
        )
        answered = {h.url for h in self._hosts}
        for url in self._urls:
            up.add_metric([url], 1.0 if url in answered else 0.0)
        yield up
        yield from self._devices()
        yield from self._workers()
        yield from self._downloads()

    def _devices(self) -> Iterator[Metric]:
        labels = ["host", "device"]
        total = GaugeMetricFamily(
            "dukat_device_memory_total_bytes", "Memory a host offers on a device.", labels=labels
        )
        free = GaugeMetricFamily(
            "dukat_device_memory_free_bytes", "What is left, loads in progress taken off.", labels=labels
        )
        for h in self._hosts:
            for d in h.devices:
                total.add_metric([h.url, d.name], d.total_memory)
                free.add_metric([h.url, d.name], d.free_memory)
        yield total
        yield free

    def _workers(self) -> Iterator[Metric]:
        labels = ["model_name", "host", "device"]
        state = GaugeMetricFamily(
            "dukat_model_state",
            "1 for each model worker, labelled with its state.",
            labels=[*labels, "state"],
        )
        memory = GaugeMetricFamily(
            "dukat_worker_memory_bytes", "A loaded model's memory, as its engine reports it.", labels=labels
        )
        estimate = GaugeMetricFamily(
            "dukat_worker_estimated_bytes", "Memory the host set aside before the load.", labels=labels
        )
        busy = GaugeMetricFamily(
            "dukat_worker_requests_in_flight", "Requests a worker has (all gateways).", labels=labels
        )
        restarts = CounterMetricFamily(
            "dukat_worker_restarts", "Times a host restarted a model worker.", labels=labels
        )
        for h in self._hosts:
            for w in h.models:
                values = [w.model_id, h.url, w.device]
                state.add_metric([*values, w.status], 1)
                memory.add_metric(values, w.memory_bytes)
                estimate.add_metric(values, w.estimated_bytes)
                busy.add_metric(values, w.in_flight)
                restarts.add_metric(values, w.restarts)
        yield from (state, memory, estimate, busy, restarts)

    def _downloads(self) -> Iterator[Metric]:
        pulled = CounterMetricFamily(
            "dukat_download_bytes", "Bytes downloaded from the hub, by model.", labels=["model_name", "host"]
        )
        for h in self._hosts:
            totals: dict[str, int] = {}
            for job in h.downloads:
                totals[job.model_id] = totals.get(job.model_id, 0) + job.downloaded_bytes
            for model_id, total in sorted(totals.items()):
                pulled.add_metric([model_id, h.url], total)
        yield pulled
