"""Metrics read from the worker hosts' state when Prometheus scrapes: models and their state, memory,
restarts, downloads, hosts up; and the requests this gateway has in flight. Nothing on the request path."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.host_api import HostState

MODEL = ("model_name",)


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
