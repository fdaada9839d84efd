"""The Helm chart (helm/dukat), rendered and linted offline with Helm v4 (helm-python-sdk), and its
objects validated against the Kubernetes schemas (kubernetes-validate, strict).

No cluster here: these check what `helm template` would hand to one.
"""

from __future__ import annotations

import base64
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "helm" / "dukat"
RELEASE, NAMESPACE = "dukat", "ai"
# The newest Kubernetes the installed schemas know, and an older one the chart still supports.
KUBE_VERSIONS = ["1.30.0", "1.37.0"]

API_KEYS = ["sk-test-one", "sk-test-two"]
ADMIN_KEYS = ["sk-admin-one"]
INTERNAL_TOKEN = "internal-test-token-value"
HF_TOKEN = "hf_test_token_value"

# Everything optional switched on: GPUs, autoscaling, an Ingress, the chart's own Secrets, a config.
FULL_VALUES: dict[str, Any] = {
    "workerHost": {
        "replicas": 3,
        "gpu": {"count": 2},
        "runtimeClassName": "nvidia",
        "nodeSelector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "env": {"DUKAT_MAX_BATCH": 32},
    },
    "gateway": {
        "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6},
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "annotations": {"nginx.ingress.kubernetes.io/proxy-buffering": "off"},
            "hosts": ["dukat.example.com"],
            "tls": [{"secretName": "dukat-tls", "hosts": ["dukat.example.com"]}],
        },
        "env": {"DUKAT_AUTO_LOAD": False},
    },
    "auth": {"apiKeys": API_KEYS, "adminKeys": ADMIN_KEYS},
    "internalToken": {"value": INTERNAL_TOKEN},
    "huggingface": {"token": HF_TOKEN},
    "models": {
        "dir": "/data/models",
        "preload": ["TinyLlama/TinyLlama-1.1B-Chat-v1.0"],
        "config": {
            "models": {"TinyLlama/TinyLlama-1.1B-Chat-v1.0": {"quantization": "4bit"}},
            "default_model": "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
        },
    },
    "persistence": {"storageClass": "nfs", "size": "1Ti"},
    "operations": {"keepAlive": "5m", "maxLoadedModels": 3, "hostMemoryBytes": 40 << 30},
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "dashboard": {"enabled": True},
    },
}

# The user's own Secrets and claim: the chart makes none of them.
EXISTING_VALUES: dict[str, Any] = {
    "auth": {"existingSecret": "my-api-keys", "secretKey": "keys"},
    "internalToken": {"existingSecret": "my-internal", "secretKey": "token"},
    "huggingface": {"existingSecret": "my-hf", "secretKey": "token"},
    "persistence": {"existingClaim": "shared-models"},
}

RENDERS = {"default": {}, "full": FULL_VALUES, "existing": EXISTING_VALUES}
# Custom resources the chart may make; kubernetes-validate knows only Kubernetes' own kinds.
CRDS = {"monitoring.coreos.com/v1"}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: helm.Chart, values: dict[str, Any]) -> list[dict[str, Any]]:
    """The chart's objects, as `helm template` would print them."""
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith(".yaml"):
            objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def pod_spec(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return one(objects, kind)["spec"]["template"]["spec"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


# ---- lint and schemas ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(RENDERS))
def test_helm_lint_strict_passes(name: str) -> None:
    report = helm.lint(CHART, RENDERS[name], strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error
    assert problems == []


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", list(RENDERS))
def test_rendered_objects_validate_strictly(chart: helm.Chart, name: str, kube_version: str) -> None:
    objects = render(chart, RENDERS[name])
    assert objects
    for obj in objects:
        if obj["apiVersion"] in CRDS:
            continue  # not Kubernetes' own: checked by test_service_monitor_scrapes_every_gateway_pod
        # Raises on an unknown field, a wrong type, or a kind/apiVersion this Kubernetes lacks.
        kubernetes_validate.validate(obj, kube_version, strict=True)


def test_optional_objects_appear_only_when_asked(chart: helm.Chart) -> None:
    kinds = sorted(o["kind"] for o in render(chart, {}))
    assert kinds == [
        "Deployment",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "PodDisruptionBudget",
        "Secret",  # the internal token: always
        "Service",
        "Service",
        "ServiceAccount",
        "StatefulSet",
    ]
    full = sorted(o["kind"] for o in render(chart, FULL_VALUES))
    optional = ["ConfigMap", "HorizontalPodAutoscaler", "Ingress", "Secret", "Secret", "ServiceMonitor"]
    assert full == sorted([*kinds, *optional, "ConfigMap"])  # the model config and the dashboard
    existing = sorted(o["kind"] for o in render(chart, EXISTING_VALUES))
    assert "Secret" not in existing and "PersistentVolumeClaim" not in existing


# ---- the gateway finds every worker host ------------------------------------------------------


@pytest.mark.parametrize("replicas", [1, 3, 8])
def test_worker_hosts_lists_every_statefulset_pod(chart: helm.Chart, replicas: int) -> None:
    objects = render(chart, {"workerHost": {"replicas": replicas}})
    sts = one(objects, "StatefulSet")
    headless = next(o for o in objects if o["kind"] == "Service" and o["spec"].get("clusterIP") == "None")
    assert sts["spec"]["replicas"] == replicas
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()

    gateway = pod_spec(objects, "Deployment")["containers"][0]
    urls = env_of(gateway)["DUKAT_WORKER_HOSTS"]["value"].split(",")
    sts_name, svc = sts["metadata"]["name"], headless["metadata"]["name"]
    assert urls == [
        f"http://{sts_name}-{i}.{svc}.{NAMESPACE}.svc.cluster.local:8100" for i in range(replicas)
    ]
    assert headless["spec"]["ports"][0]["port"] == 8100


def test_no_worker_hosts_is_refused(chart: helm.Chart) -> None:
    # With an empty DUKAT_WORKER_HOSTS the gateway would start a local worker host in its own pod.
    with pytest.raises(helm.HelmError, match=r"workerHost\.replicas must be at least 1"):
        render(chart, {"workerHost": {"replicas": 0}})


def test_commands_run_the_gateway_and_the_hosts(chart: helm.Chart) -> None:
    objects = render(chart, {})
    gateway = pod_spec(objects, "Deployment")["containers"][0]
    host = pod_spec(objects, "StatefulSet")["containers"][0]
    assert gateway["command"] == ["dukat", "serve", "--host", "0.0.0.0", "--port", "8000"]
    # `dukat host` takes its bind address, port and devices from the settings registry.
    assert host["command"] == ["dukat", "host"]
    host_env = {name: e["value"] for name, e in env_of(host).items() if "value" in e}
    assert (
        host_env.items()
        >= {"DUKAT_HOST_BIND": "0.0.0.0", "DUKAT_HOST_PORT": "8100", "DUKAT_DEVICES": "auto"}.items()
    )
    assert gateway["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert host["ports"] == [{"name": "http", "containerPort": 8100, "protocol": "TCP"}]


@pytest.mark.parametrize(("grace", "timeout"), [(None, "25"), (120, "115"), (3, "1")])
def test_the_gateways_shutdown_timeout_follows_its_termination_grace_period(
    chart: helm.Chart, grace: int | None, timeout: str
) -> None:
    values = {} if grace is None else {"gateway": {"terminationGracePeriodSeconds": grace}}
    spec = pod_spec(render(chart, values), "Deployment")
    assert spec["terminationGracePeriodSeconds"] == (grace or 30)
    assert env_of(spec["containers"][0])["DUKAT_SHUTDOWN_TIMEOUT_S"]["value"] == timeout


# ---- GPUs -----------------------------------------------------------------------------------------


def test_gpu_limits_appear_only_when_set(chart: helm.Chart) -> None:
    default = render(chart, {})
    assert "nvidia.com/gpu" not in yaml.safe_dump_all(default)

    objects = render(chart, FULL_VALUES)
    host = pod_spec(objects, "StatefulSet")
    assert host["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert host["containers"][0]["resources"]["limits"]["memory"] == "32Gi"  # the rest is kept
    assert host["runtimeClassName"] == "nvidia"
    assert host["tolerations"][0]["key"] == "nvidia.com/gpu"
    gateway = pod_spec(objects, "Deployment")
    assert "nvidia.com/gpu" not in yaml.safe_dump(gateway)


# ---- the models volume ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "claim"), [("default", "dukat-models"), ("existing", "shared-models")])
def test_models_claim_is_mounted_at_the_models_dir_in_both(chart: helm.Chart, name: str, claim: str) -> None:
    objects = render(chart, RENDERS[name])
    if name == "default":
        pvc = one(objects, "PersistentVolumeClaim")
        assert pvc["metadata"]["name"] == claim
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    models_dir = "/models"
    for kind in ("Deployment", "StatefulSet"):
        spec = pod_spec(objects, kind)
        claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in spec["volumes"]}
        volumes = [volume for volume, claim_name in claims.items() if claim_name == claim]
        assert len(volumes) == 1, kind
        container = spec["containers"][0]
        mounts = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == volumes[0]]
        assert mounts == [models_dir], kind
        assert env_of(container)["DUKAT_MODELS_DIR"]["value"] == models_dir


def test_models_dir_setting_moves_every_mount(chart: helm.Chart) -> None:
    objects = render(chart, FULL_VALUES)
    for kind in ("Deployment", "StatefulSet"):
        for container in containers(pod_spec(objects, kind)):
            mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
            assert mounts["models"] == "/data/models"
            assert env_of(container)["DUKAT_MODELS_DIR"]["value"] == "/data/models"
    assert one(objects, "PersistentVolumeClaim")["spec"]["storageClassName"] == "nfs"


def test_model_config_is_copied_onto_the_volume_only_when_absent(chart: helm.Chart) -> None:
    assert "initContainers" not in pod_spec(render(chart, {}), "Deployment")
    objects = render(chart, FULL_VALUES)
    (config,) = [o for o in objects if o["kind"] == "ConfigMap" and "config.json" in o["data"]]
    assert yaml.safe_load(config["data"]["config.json"]) == FULL_VALUES["models"]["config"]
    spec = pod_spec(objects, "Deployment")
    (init,) = spec["initContainers"]
    script = init["command"][-1]
    assert 'if [ -e "$cfg" ]; then' in script and "exit 0" in script  # an existing file is kept
    assert 'cfg="$DUKAT_MODELS_DIR/config.json"' in script
    config_volume = next(v for v in spec["volumes"] if "configMap" in v)
    assert config_volume["configMap"]["name"] == config["metadata"]["name"]
    assert {m["name"] for m in init["volumeMounts"]} == {"models", config_volume["name"]}


# ---- secrets --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "keys_ref", "token_ref"),
    [
        ("full", ("dukat-api-keys", "api-keys"), ("dukat-hf-token", "hf-token")),
        ("existing", ("my-api-keys", "keys"), ("my-hf", "token")),
    ],
)
def test_secrets_are_referenced_never_inlined(
    chart: helm.Chart, name: str, keys_ref: tuple[str, str], token_ref: tuple[str, str]
) -> None:
    objects = render(chart, RENDERS[name])
    gateway = env_of(pod_spec(objects, "Deployment")["containers"][0])
    host = env_of(pod_spec(objects, "StatefulSet")["containers"][0])
    for env, var, ref in ((gateway, "DUKAT_API_KEYS", keys_ref), (host, "HF_TOKEN", token_ref)):
        assert "value" not in env[var]
        secret_ref = env[var]["valueFrom"]["secretKeyRef"]
        assert (secret_ref["name"], secret_ref["key"]) == ref
    assert "HF_TOKEN" not in gateway and "DUKAT_API_KEYS" not in host  # each where it is needed

    secrets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Secret"}
    if name == "full":
        assert base64.b64decode(secrets[keys_ref[0]]["data"][keys_ref[1]]).decode() == ",".join(API_KEYS)
        assert base64.b64decode(secrets[token_ref[0]]["data"][token_ref[1]]).decode() == HF_TOKEN
    else:
        assert secrets == {}
    # No secret value anywhere outside the Secrets, encoded or not.
    rest = yaml.safe_dump_all([o for o in objects if o["kind"] != "Secret"])
    for secret in [*API_KEYS, *ADMIN_KEYS, INTERNAL_TOKEN, HF_TOKEN]:
        assert secret not in rest
        assert base64.b64encode(secret.encode()).decode() not in rest


def test_no_auth_secret_by_default(chart: helm.Chart) -> None:
    objects = render(chart, {})
    [secret] = [o for o in objects if o["kind"] == "Secret"]
    assert secret["metadata"]["name"] == "dukat-internal-token"  # drawn at install
    assert len(base64.b64decode(secret["data"]["internal-token"])) == 48
    assert "DUKAT_API_KEYS" not in env_of(pod_spec(objects, "Deployment")["containers"][0])
    assert "HF_TOKEN" not in env_of(pod_spec(objects, "StatefulSet")["containers"][0])


@pytest.mark.parametrize(
    ("component", "var"),
    [
        ("gateway", "DUKAT_API_KEYS"),
        ("gateway", "DUKAT_ADMIN_KEYS"),
        ("gateway", "DUKAT_INTERNAL_TOKEN"),
        ("workerHost", "DUKAT_INTERNAL_TOKEN"),
        ("workerHost", "HF_TOKEN"),
        ("gateway", "DUKAT_WORKER_HOSTS"),
        ("workerHost", "DUKAT_HOST_PORT"),
    ],
)
def test_secrets_and_chart_settings_cannot_be_passed_as_plain_env(
    chart: helm.Chart, component: str, var: str
) -> None:
    with pytest.raises(helm.HelmError, match="is set by the chart"):
        render(chart, {component: {"env": {var: "plain-text"}}})


@pytest.mark.parametrize(
    ("name", "admin_ref", "token_ref"),
    [
        ("full", ("dukat-api-keys", "admin-keys", False), ("dukat-internal-token", "internal-token")),
        ("existing", ("my-api-keys", "admin-keys", True), ("my-internal", "token")),
    ],
)
def test_admin_keys_and_the_internal_token_come_from_secrets(
    chart: helm.Chart, name: str, admin_ref: tuple[str, str, bool], token_ref: tuple[str, str]
) -> None:
    objects = render(chart, RENDERS[name])
    gateway = env_of(pod_spec(objects, "Deployment")["containers"][0])
    host = env_of(pod_spec(objects, "StatefulSet")["containers"][0])
    admin = gateway["DUKAT_ADMIN_KEYS"]["valueFrom"]["secretKeyRef"]
    assert (admin["name"], admin["key"], admin.get("optional", False)) == admin_ref
    assert "DUKAT_ADMIN_KEYS" not in host
    for env in (gateway, host):  # the same token on both sides
        ref = env["DUKAT_INTERNAL_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == token_ref
    if name == "full":
        secrets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Secret"}
        admin_keys = secrets["dukat-api-keys"]["data"]["admin-keys"]
        assert base64.b64decode(admin_keys).decode() == ",".join(ADMIN_KEYS)
        token = secrets["dukat-internal-token"]["data"]["internal-token"]
        assert base64.b64decode(token).decode() == INTERNAL_TOKEN


@pytest.mark.parametrize("name", list(RENDERS))
def test_only_gateway_pods_reach_the_worker_hosts(chart: helm.Chart, name: str) -> None:
    objects = render(chart, RENDERS[name])
    policy = one(objects, "NetworkPolicy")["spec"]
    host_labels = one(objects, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    gateway_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    selected = policy["podSelector"]["matchLabels"]
    assert selected.items() <= host_labels.items() and not selected.items() <= gateway_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    [rule] = policy["ingress"]
    [source] = rule["from"]
    allowed = source["podSelector"]["matchLabels"]
    assert allowed.items() <= gateway_labels.items() and not allowed.items() <= host_labels.items()
    assert "ports" not in rule  # the host API and its model workers' ephemeral ports
    off = render(chart, {"networkPolicy": {"enabled": False}})
    assert not [o for o in off if o["kind"] == "NetworkPolicy"]


def test_changed_secrets_roll_the_pods(chart: helm.Chart) -> None:
    def checksums(values: dict[str, Any]) -> set[str]:
        objects = render(chart, values)
        return {
            one(objects, kind)["spec"]["template"]["metadata"]["annotations"]["checksum/secrets"]
            for kind in ("Deployment", "StatefulSet")
        }

    assert checksums(FULL_VALUES) != checksums({**FULL_VALUES, "auth": {"apiKeys": ["sk-rotated"]}})


# ---- image, probes, security --------------------------------------------------------------------


def test_image_tag_is_pinned_to_the_app_version(chart: helm.Chart) -> None:
    assert chart.metadata["appVersion"] == "0.1.0"
    for name in RENDERS:
        objects = render(chart, RENDERS[name])
        for kind in ("Deployment", "StatefulSet"):
            for container in containers(pod_spec(objects, kind)):
                assert container["image"] == "dukat:0.1.0"
    objects = render(chart, {"image": {"repository": "registry.example.com/dukat", "tag": "0.1.1"}})
    assert pod_spec(objects, "Deployment")["containers"][0]["image"] == "registry.example.com/dukat:0.1.1"
    with pytest.raises(helm.HelmError, match="pinned version"):
        render(chart, {"image": {"tag": "latest"}})


def test_app_version_and_dockerfile_match_the_package() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    chart_meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart_meta["appVersion"] == pyproject["project"]["version"]
    torch_pin = next(
        line.strip()
        for line in (REPO_ROOT / "constraints.txt").read_text().splitlines()
        if line.startswith("torch==")
    )
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert f'ARG TORCH_REQUIREMENT="{torch_pin}"' in dockerfile
    assert "pip install -c constraints.txt ." in dockerfile


@pytest.mark.parametrize(
    ("kind", "paths"),
    [
        # The gateway: slow starts (preloads) on readiness, liveness on its own route.
        ("Deployment", ("/health/ready", "/health/live", "/health/ready")),
        ("StatefulSet", ("/health", "/health", "/health")),
    ],
)
def test_probes_hit_health_on_the_http_port(
    chart: helm.Chart, kind: str, paths: tuple[str, str, str]
) -> None:
    container = pod_spec(render(chart, {}), kind)["containers"][0]
    for probe, path in zip(("startupProbe", "livenessProbe", "readinessProbe"), paths, strict=True):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    assert [p["name"] for p in container["ports"]] == ["http"]


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet"])
def test_pods_run_as_non_root(chart: helm.Chart, kind: str) -> None:
    spec = pod_spec(render(chart, FULL_VALUES), kind)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["automountServiceAccountToken"] is False
    for container in containers(spec):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]


def test_autoscaler_owns_the_gateway_replicas(chart: helm.Chart) -> None:
    assert one(render(chart, {}), "Deployment")["spec"]["replicas"] == 2
    objects = render(chart, FULL_VALUES)
    deployment = one(objects, "Deployment")
    assert "replicas" not in deployment["spec"]
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_autoscaler_without_a_cpu_request_is_refused(chart: helm.Chart) -> None:
    values = {"gateway": {"autoscaling": {"enabled": True}, "resources": {"requests": None}}}
    with pytest.raises(helm.HelmError, match=r"needs gateway\.resources\.requests\.cpu"):
        render(chart, values)


def test_ingress_routes_to_the_gateway_service(chart: helm.Chart) -> None:
    objects = render(chart, FULL_VALUES)
    ingress = one(objects, "Ingress")
    service = next(o for o in objects if o["kind"] == "Service" and o["spec"].get("clusterIP") != "None")
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "dukat.example.com"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": service["metadata"]["name"], "port": {"name": "http"}}


# ---- values.yaml is documented ----------------------------------------------------------------------


def test_every_values_key_is_documented() -> None:
    """Every key has its own `# --` comment, except the fields of a documented map that documents
    none of its fields (e.g. `securityContext`: its comment covers the whole default)."""
    key_line = re.compile(r"^(\s*)([A-Za-z][\w./-]*):")
    keys: list[tuple[str, bool, int | None]] = []  # (line, documented, index of the parent key)
    stack: list[tuple[int, int]] = []  # (indent, index) of the enclosing keys
    documented_above = False
    for number, line in enumerate((CHART / "values.yaml").read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("# --"):
            documented_above = True
        elif stripped and not stripped.startswith("#"):
            match = key_line.match(line)
            if match:
                indent = len(match.group(1))
                while stack and stack[-1][0] >= indent:
                    stack.pop()
                keys.append((f"{number}: {stripped}", documented_above, stack[-1][1] if stack else None))
                stack.append((indent, len(keys) - 1))
            documented_above = False
    documents_a_field = {parent for _, documented, parent in keys if documented and parent is not None}

    def covered(parent: int | None) -> bool:
        while parent is not None:
            if keys[parent][1] and parent not in documents_a_field:
                return True
            parent = keys[parent][2]
        return False

    undocumented = [line for line, documented, parent in keys if not documented and not covered(parent)]
    assert undocumented == []
    assert len(keys) > 50
