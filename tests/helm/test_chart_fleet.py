"""The chart's fleet options, rendered offline: KEDA scaling the worker hosts from zero, and the keys
file (named keys with limits) mounted into the gateway from a Secret of the user's."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest
from kubernetes_validate import utils as kubernetes_validate

from tests.helm.test_chart import (
    CHART,
    CRDS,
    KUBE_VERSIONS,
    NAMESPACE,
    chart,
    env_of,
    one,
    pod_spec,
    render,
)

__all__ = ["chart"]  # the module-scoped fixture, shared

KEDA = {"workerHost": {"keda": {"enabled": True, "maxReplicaCount": 3}}}
KEYS_FILE = {"auth": {"keysFile": {"existingSecret": "team-keys"}}}
FLEET: dict[str, Any] = {**KEDA, **KEYS_FILE}


def test_helm_lint_strict_passes_with_the_fleet_options() -> None:
    report = helm.lint(CHART, FLEET, strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_fleet_objects_validate_strictly(chart: helm.Chart, kube_version: str) -> None:
    for obj in render(chart, FLEET):
        if obj["apiVersion"] not in {*CRDS, "keda.sh/v1alpha1"}:
            kubernetes_validate.validate(obj, kube_version, strict=True)


def test_keda_scales_the_worker_hosts_from_zero_on_the_waiting_metric(chart: helm.Chart) -> None:
    objects = render(chart, KEDA)
    scaled = one(objects, "ScaledObject")
    sts = one(objects, "StatefulSet")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "name": sts["metadata"]["name"],
    }  # fmt: skip
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (0, 3)
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert "vllm:num_requests_waiting" in trigger["metadata"]["query"]
    assert "dukat_capacity_refusals_total" in trigger["metadata"]["query"]
    # With no host up the worker series are absent: every term must fall back to 0, not empty the sum.
    assert trigger["metadata"]["query"].count("or vector(0)") == 3
    assert all(isinstance(v, str) for v in trigger["metadata"].values())  # KEDA wants strings
    assert "replicas" not in sts["spec"]  # KEDA's to set: an upgrade must not reset it

    gateway = env_of(pod_spec(objects, "Deployment")["containers"][0])
    hosts = gateway["DUKAT_WORKER_HOSTS"]["value"].split(",")
    assert len(hosts) == 3  # every host KEDA may start
    assert gateway["DUKAT_CAPACITY_WAIT_S"]["value"] == "600"


def test_without_keda_there_is_no_scaled_object_and_no_capacity_wait(chart: helm.Chart) -> None:
    objects = render(chart, {})
    assert not [o for o in objects if o["kind"] == "ScaledObject"]
    assert one(objects, "StatefulSet")["spec"]["replicas"] == 1
    assert "DUKAT_CAPACITY_WAIT_S" not in env_of(pod_spec(objects, "Deployment")["containers"][0])


def test_keda_bounds_that_cannot_work_are_refused(chart: helm.Chart) -> None:
    with pytest.raises(Exception, match="minReplicaCount must not exceed"):
        render(chart, {"workerHost": {"keda": {"enabled": True, "minReplicaCount": 5, "maxReplicaCount": 2}}})


def test_the_keys_file_is_mounted_from_its_secret_and_named_in_the_env(chart: helm.Chart) -> None:
    spec = pod_spec(render(chart, KEYS_FILE), "Deployment")
    container = spec["containers"][0]
    assert env_of(container)["DUKAT_KEYS_FILE"]["value"] == "/etc/dukat/keys/keys.json"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "keys-file")
    assert mount == {"name": "keys-file", "mountPath": "/etc/dukat/keys", "readOnly": True}
    volume = next(v for v in spec["volumes"] if v["name"] == "keys-file")
    assert volume["secret"]["secretName"] == "team-keys"
    assert volume["secret"]["items"] == [{"key": "keys.json", "path": "keys.json"}]
    host = pod_spec(render(chart, KEYS_FILE), "StatefulSet")["containers"][0]
    assert "DUKAT_KEYS_FILE" not in env_of(host)  # the gateway alone checks keys
