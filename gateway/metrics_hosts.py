"""Metrics read from the worker hosts' state when Prometheus scrapes: models and their state, memory,
restarts, downloads, hosts up; and the requests this gateway has in flight. Nothing on the request path."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.host_api import DeviceState, HostState, WorkerState

MODEL = ("model_name",)
T = TypeVar("T")
# A figure of a device or worker: its metric's name and help, and how to read it from the record.
Figure = tuple[str, str, Callable[[T], float]]

DEVICE_FIGURES: tuple[Figure[DeviceState], ...] = (
    ("dukat_device_memory_total_bytes", "Memory a host offers on a device.", lambda d: d.total_memory),
    ("dukat_device_memory_free_bytes", "What is left, loads in progress taken off.", lambda d: d.free_memory),
)
WORKER_GAUGES: tuple[Figure[WorkerState], ...] = (
    (
        "dukat_worker_memory_bytes",
        "A loaded model's memory, as its engine reports it.",
        lambda w: w.memory_bytes,
    ),
    (
        "dukat_worker_estimated_bytes",
        "Memory the host set aside before the load.",
        lambda w: w.estimated_bytes,
    ),
    ("dukat_worker_requests_in_flight", "Requests a worker has (all gateways).", lambda w: w.in_flight),
)
WORKER_COUNTERS: tuple[Figure[WorkerState], ...] = (
    ("dukat_worker_restarts", "Times a host restarted a model worker.", lambda w: w.restarts),
)


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
        rows = [([h.url, d.name], d) for h in self._hosts for d in h.devices]
        yield from _figures(GaugeMetricFamily, ["host", "device"], rows, DEVICE_FIGURES)

    def _workers(self) -> Iterator[Metric]:
        # `replica` tells apart the workers of one model on one device (DUKAT_REPLICAS_PER_DEVICE).
        labels = ["model_name", "host", "device", "replica"]
        rows = [([w.model_id, h.url, w.device, str(w.replica)], w) for h in self._hosts for w in h.models]
        state = GaugeMetricFamily(
            "dukat_model_state",
            "1 for each model worker, labelled with its state.",
            labels=[*labels, "state"],
        )
        for values, w in rows:
            state.add_metric([*values, w.status], 1)
        yield state
        yield from _figures(GaugeMetricFamily, labels, rows, WORKER_GAUGES)
        yield from _figures(CounterMetricFamily, labels, rows, WORKER_COUNTERS)

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


def _figures(
    family: type[GaugeMetricFamily | CounterMetricFamily],
    labels: list[str],
    rows: list[tuple[list[str], T]],
    figures: tuple[Figure[T], ...],
) -> Iterator[Metric]:
    """A metric family per figure, a sample per row (label values, record)."""
    for name, help_, read in figures:
        metric = family(name, help_, labels=labels)
        for values, record in rows:
            metric.add_metric(values, read(record))
        yield metric
