"""The gateway's Prometheus metrics, in a registry of its own (built by the app factory, one per app).

Two kinds:
- what this gateway sees, counted as requests finish: vLLM's names where the meaning matches
  (`vllm:time_to_first_token_seconds`, `vllm:e2e_request_latency_seconds`, ...), labelled
  `model_name`, so dashboards built for vLLM work; each gateway replica exports its own.
- what the worker hosts report (gateway/metrics_hosts.py), read when Prometheus scrapes.

The request path pays one call per finished request (`ModelMetrics.finished`, ~2 us): plain counters
and bucket counts in this gateway's event loop (no locks: one thread owns them), turned into
Prometheus families only when scraped. prometheus-client's own Histogram takes a lock per update
(~15 us for a request's seven updates).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.keys import charge_current_key
from gateway.metrics_hosts import MODEL, HostsCollector
from gateway.request_log import add_up
from shared.generation import FinishReason, GenerateResult
from shared.host_api import HostState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# vLLM's buckets, so its dashboards' quantiles read the same.
# fmt: off
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
               240.0, 480.0, 960.0, 1920.0, 7680.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
# fmt: on
OVERHEAD_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
LOAD_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
FINISH_REASONS: tuple[str, ...] = get_args(FinishReason)
OVERHEAD_DOC = "Latency a request spends outside its model worker's engine (wire, loop hops)."
HISTOGRAMS = {  # ModelMetrics attribute -> (name, help, buckets)
    "ttft": (
        "vllm:time_to_first_token_seconds",
        "Time to first token (as the gateway sees it).",
        TTFT_BUCKETS,
    ),
    "e2e": (
        "vllm:e2e_request_latency_seconds",
        "Request latency from dispatch to the last token.",
        E2E_BUCKETS,
    ),
    "itl": ("vllm:inter_token_latency_seconds", "Mean time between tokens of a request.", ITL_BUCKETS),
    "overhead": ("dukat_gateway_overhead_seconds", OVERHEAD_DOC, OVERHEAD_BUCKETS),
}


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        load_doc = "Seconds model workers took to load."
        self.load_duration = Histogram(
            "dukat_model_load_duration_seconds", load_doc, MODEL, buckets=LOAD_BUCKETS, registry=r
        )
        waiting_doc = "Requests at this gateway waiting for their model to load."
        self.waiting = Gauge("vllm:num_requests_waiting", waiting_doc, MODEL, registry=r)
        refused_doc = "Requests refused with 503 no_capacity: no worker host up, or none with room."
        self.capacity_refusals = Counter("dukat_capacity_refusals", refused_doc, MODEL, registry=r)
        self._models: dict[str, ModelMetrics] = {}
        r.register(_RequestsCollector(self._models))
        # (method, route template, status) -> requests answered; what one call per request adds to.
        self.routes: dict[tuple[str, str, int], int] = {}
        r.register(_RoutesCollector(self.routes))
        self.hosts = HostsCollector()
        r.register(self.hosts)

    def for_model(self, model_id: str) -> ModelMetrics:
        """The request path's handle for `model_id`."""
        found = self._models.get(model_id)
        if found is None:
            found = self._models[model_id] = ModelMetrics()
        return found

    def answered(self, method: str, route: str, status: int) -> None:
        """One request answered on `route` (the route's template: bounded labels)."""
        key = (method, route, status)
        self.routes[key] = self.routes.get(key, 0) + 1

    def render(self, hosts: list[HostState], host_urls: list[str], in_flight: dict[str, int]) -> bytes:
        """The exposition text, with the hosts' state and this gateway's requests in flight as of now."""
        self.hosts.update(hosts, host_urls, in_flight)
        return generate_latest(self.registry)


class _Buckets:
    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip([*map(str, self.bounds), "+Inf"], self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


class ModelMetrics:
    """One model's request figures at this gateway; `finished` is what the request path calls."""

    __slots__ = (
        "e2e",
        "generation_tokens",
        "itl",
        "overhead",
        "prefix_cache_hits",
        "prefix_cache_queries",
        "prompt_tokens",
        "rejections",
        "success",
        "ttft",
    )

    def __init__(self) -> None:
        self.ttft, self.e2e, self.itl, self.overhead = (_Buckets(spec[2]) for spec in HISTOGRAMS.values())
        self.prompt_tokens = self.generation_tokens = self.rejections = 0
        self.prefix_cache_queries = self.prefix_cache_hits = 0
        self.success = dict.fromkeys(FINISH_REASONS, 0)

    def finished(self, result: GenerateResult, elapsed_s: float, first_token_s: float | None) -> None:
        """A generation ended: `elapsed_s` from dispatch to its result, `first_token_s` to its first
        streamed text (None when not streamed: the worker's own first-token time stands in)."""
        t, tokens = result.timings, result.completion_tokens
        charge_current_key(result.prompt_tokens, tokens)
        add_up(prompt_tokens=result.prompt_tokens, completion_tokens=tokens)  # the log line, the span
        self.prompt_tokens += result.prompt_tokens
        # Each generation's prompt was looked up in its worker's prefix cache (vLLM counts tokens).
        self.prefix_cache_queries += result.prompt_tokens
        self.prefix_cache_hits += result.cached_tokens
        self.generation_tokens += tokens
        self.success[result.finish_reason] += 1
        self.e2e.observe(elapsed_s)
        outside = max(elapsed_s - t.total_s, 0.0)
        self.ttft.observe(first_token_s if first_token_s is not None else t.first_token_s + outside)
        if tokens > 1:
            self.itl.observe((t.total_s - t.first_token_s) / (tokens - 1))
        self.overhead.observe(outside)

    def embedded(self, prompt_tokens: int, elapsed_s: float) -> None:
        charge_current_key(prompt_tokens, 0)
        self.prompt_tokens += prompt_tokens
        self.success["stop"] += 1
        self.e2e.observe(elapsed_s)

    def rejected(self) -> None:
        self.rejections += 1


class _RoutesCollector(Collector):
    """Requests by route: every route's traffic and errors, the ones no model is behind included."""

    def __init__(self, routes: dict[tuple[str, str, int], int]) -> None:
        self.routes = routes

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        doc = "HTTP requests this gateway answered, by method, route template and status."
        family = CounterMetricFamily("dukat_http_requests", doc, labels=["method", "route", "status"])
        for (method, route, status), count in sorted(self.routes.items()):
            family.add_metric([method, route, str(status)], count)
        yield family


class _RequestsCollector(Collector):
    """The models' request figures as Prometheus families, built at scrape time."""

    def __init__(self, models: dict[str, ModelMetrics]) -> None:
        self.models = models

    def describe(self) -> list[Metric]:
        return []  # families depend on the models seen so far

    def collect(self) -> Iterator[Metric]:
        models = sorted(self.models.items())
        for attr, (name, doc, _) in HISTOGRAMS.items():
            family = HistogramMetricFamily(name, doc, labels=MODEL)
            for model_id, m in models:
                buckets: _Buckets = getattr(m, attr)
                family.add_metric([model_id], buckets.cumulative(), buckets.sum)
            yield family
        counters = {
            "vllm:prompt_tokens": ("Prompt tokens processed.", "prompt_tokens"),
            "vllm:generation_tokens": ("Tokens generated.", "generation_tokens"),
            "vllm:prefix_cache_queries": (
                "Prompt tokens looked up in the model workers' prefix caches.",
                "prefix_cache_queries",
            ),
            "vllm:prefix_cache_hits": ("Prompt tokens the prefix caches gave.", "prefix_cache_hits"),
            "dukat_queue_rejections": (
                "Requests refused because a worker's queue could not start them in time or was full (429).",
                "rejections",
            ),
        }
        for name, (doc, attr) in counters.items():
            counter = CounterMetricFamily(name, doc, labels=MODEL)
            for model_id, m in models:
                counter.add_metric([model_id], getattr(m, attr))
            yield counter
        success = CounterMetricFamily("vllm:request_success", "Requests finished, by finish reason.",
                                      labels=[*MODEL, "finished_reason"])  # fmt: skip
        for model_id, m in models:
            for reason, n in m.success.items():
                success.add_metric([model_id, reason], n)
        yield success
