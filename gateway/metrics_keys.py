"""Per-key figures of this gateway as Prometheus families, built at scrape time: `dukat_key_*`,
labelled with the key's name (never its secret)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.keys import KeyRing

KEY = ["key"]
COUNTERS = {  # name -> (help, KeyUsage attribute)
    "dukat_key_requests": ("Requests admitted for the key at this gateway.", "requests"),
    "dukat_key_prompt_tokens": ("Prompt tokens of the key's requests.", "prompt_tokens"),
    "dukat_key_completion_tokens": ("Tokens generated for the key's requests.", "completion_tokens"),
}


class KeysCollector(Collector):
    """Reads each key's usage (gateway/rate_limits.py) when Prometheus scrapes."""

    def __init__(self, keys: KeyRing) -> None:
        self.keys = keys

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        usages = self.keys.usages()
        for name, (doc, attr) in COUNTERS.items():
            family = CounterMetricFamily(name, doc, labels=KEY)
            for u in usages:
                family.add_metric([u.name], getattr(u, attr))
            yield family
        doc = "Requests of the key refused with 429 by its own limits."
        limited = CounterMetricFamily("dukat_key_rate_limited", doc, labels=[*KEY, "limit"])
        for u in usages:
            for limit, n in u.rate_limited.items():
                limited.add_metric([u.name, limit], n)
        yield limited
        doc = "The key's requests in flight at this gateway."
        running = GaugeMetricFamily("dukat_key_requests_in_flight", doc, labels=KEY)
        for u in usages:
            running.add_metric([u.name], u.in_flight)
        yield running
