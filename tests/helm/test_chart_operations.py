"""The chart's operations objects: PodDisruptionBudgets, the ServiceMonitor, the Grafana dashboard
(every query names a metric the gateway exports), and the hosts' keep-alive / capacity settings."""

from __future__ import annotations

import json
import re
from typing import Any

import helm_python as helm
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import GatewayMetrics
from shared.generation import GenerateResult, Timings
from shared.host_api import DeviceState, DownloadJob, HostState, WorkerState
from tests.helm.test_chart import CHART, FULL_VALUES, chart, env_of, one, pod_spec, render

__all__ = ["chart"]  # the module-scoped fixture, shared


def test_disruption_budgets_select_their_own_pods(chart: helm.Chart) -> None:
    objects = render(chart, {})
    budgets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "PodDisruptionBudget"}
    for kind in ("Deployment", "StatefulSet"):
        workload = one(objects, kind)
        labels = workload["spec"]["template"]["metadata"]["labels"]
        budget = budgets[workload["metadata"]["name"]]
        assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    gateway, hosts = (budgets[one(objects, k)["metadata"]["name"]] for k in ("Deployment", "StatefulSet"))
    assert gateway["spec"]["minAvailable"] == 1
    assert hosts["spec"]["maxUnavailable"] == 1
    off = {"gateway": {"podDisruptionBudget": {"enabled": False}}}
    assert len([o for o in render(chart, off) if o["kind"] == "PodDisruptionBudget"]) == 1


def test_service_monitor_scrapes_every_gateway_pod(chart: helm.Chart) -> None:
    assert not [o for o in render(chart, {}) if o["kind"] == "ServiceMonitor"]
    objects = render(chart, FULL_VALUES)
    monitor = one(objects, "ServiceMonitor")
    service = next(o for o in objects if o["kind"] == "Service" and o["spec"].get("clusterIP") != "None")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["ai"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == (service["spec"]["ports"][0]["name"], "/metrics")
    assert set(endpoint) == {"port", "path", "interval", "scrapeTimeout"}


def exported_metric_names() -> set[str]:
    """Every sample name a gateway exports once it has seen a request, a host, a worker, a download."""
    metrics = GatewayMetrics()
    result = GenerateResult(
        text="x",
        finish_reason="stop",
        prompt_tokens=3,
        completion_tokens=2,
        timings=Timings(first_token_s=0.01, total_s=0.02),
    )
    metrics.for_model("m").finished(result, 0.03, None)
    metrics.for_model("m").rejected()
    metrics.load_duration.labels("m").observe(1.0)
    metrics.waiting.labels("m").set(0)
    worker = WorkerState(model_id="m", status="loaded", device="cpu", quantization="none")
    device = DeviceState(name="cpu", total_memory=10, free_memory=5)
    job = DownloadJob(id="d", model_id="m", status="done", downloaded_bytes=7)
    host = HostState(host_id="h", url="http://h:8100", models=[worker], devices=[device], downloads=[job])
    text = metrics.render([host], [host.url], {"m": 1}).decode()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def test_dashboard_queries_only_metrics_the_gateway_exports(chart: helm.Chart) -> None:
    objects = render(chart, FULL_VALUES)
    config_map = next(o for o in objects if o["kind"] == "ConfigMap" and "dukat.json" in o.get("data", {}))
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["dukat.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "dukat.json").read_text())
    exported = exported_metric_names()
    queried: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            queried |= set(re.findall(r"\b((?:vllm:|dukat_)[a-z0-9_:]+)", target["expr"]))
    assert len(queried) >= 15
    assert queried <= exported, sorted(queried - exported)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, {"DUKAT_KEEP_ALIVE": "30m", "DUKAT_MAX_LOADED_MODELS": "0", "DUKAT_HOST_MEMORY_BYTES": "0"}),
        (
            FULL_VALUES,
            {
                "DUKAT_KEEP_ALIVE": "5m",
                "DUKAT_MAX_LOADED_MODELS": "3",
                "DUKAT_HOST_MEMORY_BYTES": str(40 << 30),
            },
        ),
    ],
)
def test_hosts_get_the_operations_settings(
    chart: helm.Chart, values: dict[str, Any], expected: dict[str, str]
) -> None:
    host = env_of(pod_spec(render(chart, values), "StatefulSet")["containers"][0])
    assert {name: host[name]["value"] for name in expected} == expected
