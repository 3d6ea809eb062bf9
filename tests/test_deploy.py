"""The Kubernetes and KServe manifests (deploy/): rendered by kubectl's own Kustomize, every
object validated against its API schema (Kubernetes' offline schemas, strict; the CRDs' schemas
of KEDA, the Prometheus Operator and KServe, with unknown fields refused), and held to what the
docs promise. tests/test_container.py runs the pod's container spec and KServe's under podman;
tests/test_prometheus.py evaluates the autoscaler's query on a real Prometheus."""

from __future__ import annotations

import copy
import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from gameart.cli import serve as serve_cli
from gameart.ops.properties import read_properties
from tests import components
from tests.helpers import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "k8s"
SCHEMAS = DEPLOY / "schemas"
KUBERNETES_VERSION = "1.30.0"  # the oldest release the manifests claim (docs/kubernetes.md)
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobject_v1alpha1.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_podmonitor_v1.json",
    ("serving.kserve.io/v1beta1", "InferenceService"): (
        "serving.kserve.io_inferenceservice_v1beta1.json.gz"
    ),
}


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = components.require("kubectl")["kubectl"]
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = {}
    for doc in docs:
        assert doc["kind"] not in kinds, f"two {doc['kind']}s"
        kinds[doc["kind"]] = doc
    return kinds


def closed(schema: Any) -> Any:
    """The schema with unknown fields refused wherever it lists the fields (a CRD's API server
    prunes them silently, which would hide a misspelled field)."""
    if isinstance(schema, dict):
        schema = {key: closed(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    return schema


def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    path = SCHEMAS / CRD_SCHEMAS[(api_version, kind)]
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return closed(json.loads(raw))


def validate(doc: dict[str, Any]) -> None:
    key = (doc["apiVersion"], doc["kind"])
    if key in CRD_SCHEMAS:
        body = copy.deepcopy(doc)
        body["metadata"] = {}  # metadata is ObjectMeta, checked by the API server itself
        jsonschema.validate(body, crd_schema(*key))
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_overlays_render_and_every_object_validates(overlay):
    docs = render(overlay)
    assert set(by_kind(docs)) == {
        "ConfigMap",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "ScaledObject",
        "Ingress",
        "NetworkPolicy",
        "PodMonitor",
    }
    for doc in docs:
        validate(doc)


def test_the_crd_check_refuses_a_misspelled_field():
    scaled = by_kind(render("cpu"))["ScaledObject"]
    scaled["spec"]["minReplicas"] = 2  # KEDA calls it minReplicaCount
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)
    deployment = by_kind(render("cpu"))["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFS"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_the_pod_is_locked_down_and_stops_within_its_grace():
    kinds = by_kind(render("cpu"))
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    container = _container(kinds["Deployment"])
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["readOnlyRootFilesystem"]
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert not pod["automountServiceAccountToken"]
    # the supervisor's grace, after the preStop pause, fits in the kubelet's
    args = serve_cli.build_parser().parse_args(container["args"][2:])
    assert args.command == "start" and args.foreground
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pre_stop + args.grace < pod["terminationGracePeriodSeconds"]
    # probes: readiness is READY workers and not draining; liveness only /ping
    for probe in ("startupProbe", "readinessProbe"):
        command = container[probe]["exec"]["command"]
        assert serve_cli.build_parser().parse_args(command[2:]).live is False
    live = container["livenessProbe"]["exec"]["command"]
    assert serve_cli.build_parser().parse_args(live[2:]).live is True
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # model loading
    # the ConfigMap the pod mounts is the file in the repository, byte for byte
    config = kinds["ConfigMap"]["data"]["config.properties"]
    assert config == (K8S / "base" / "config.properties").read_text()
    assert args.config == Path("/etc/gameart/config.properties")


def test_only_inference_is_exposed_and_metrics_only_to_monitoring():
    kinds = by_kind(render("cpu"))
    assert [p["targetPort"] for p in kinds["Service"]["spec"]["ports"]] == ["inference"]
    ports = {p["name"]: p["containerPort"] for p in _container(kinds["Deployment"])["ports"]}
    assert ports == {"inference": 8080, "metrics": 8082}  # management is not a port at all
    rules = kinds["NetworkPolicy"]["spec"]["ingress"]
    assert [[p["port"] for p in rule["ports"]] for rule in rules] == [["inference"], ["metrics"]]
    assert rules[1]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    paths = [p["path"] for p in kinds["Ingress"]["spec"]["rules"][0]["http"]["paths"]]
    assert paths == ["/predictions", "/v2/models"]
    assert kinds["Ingress"]["spec"]["tls"]  # client keys never travel in cleartext
    # the policy admits the client pods by the one label the docs give them
    assert rules[0]["from"][1] == {"podSelector": {"matchLabels": {"gameart.io/client": "true"}}}
    assert "replicas" not in kinds["Deployment"]["spec"]  # KEDA owns the count


def test_the_gpu_overlay_asks_for_one_gpu_and_the_gpu_image():
    cpu, gpu = (_container(by_kind(render(o))["Deployment"]) for o in ("cpu", "gpu"))
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    assert gpu["image"].endswith(":gpu") and cpu["image"].endswith(":cpu")


def _differences(path: Path, reference: Path) -> dict[str, tuple[str | None, str | None]]:
    ours, theirs = read_properties(path), read_properties(reference)
    return {
        key: (theirs.get(key), ours.get(key))
        for key in sorted(set(ours) | set(theirs))
        if ours.get(key) != theirs.get(key)
    }


def test_the_pod_configs_differ_from_the_projects_only_where_their_headers_say():
    pod = _differences(K8S / "base" / "config.properties", REPO_ROOT / "config.properties")
    assert pod == {
        "inference_address": ("http://127.0.0.1:8080", "http://0.0.0.0:8080"),
        "metrics_address": ("http://127.0.0.1:8082", "http://0.0.0.0:8082"),
        "model_store": ("model_store", "/app/model_store"),
        "metrics_config": ("metrics.yaml", "/app/metrics.yaml"),
        "disable_token_authorization": ("false", "true"),
    }
    kserve = _differences(
        DEPLOY / "kserve" / "config" / "config.properties", K8S / "base" / "config.properties"
    )
    assert kserve == {
        "model_store": ("/app/model_store", "/mnt/models/model-store"),
        # as written in the file (java.util.Properties unescapes the backslash)
        "allowed_urls": (r"file://.*/model_store/.*\\.mar", r"file://.*/model-store/.*\\.mar"),
    }
    assert "service_envelope" not in read_properties(
        DEPLOY / "kserve" / "config" / "config.properties"
    )


def test_the_autoscaler_reads_the_recorded_queue_wait():
    scaled = by_kind(render("cpu"))["ScaledObject"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "Value"
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    recorded = {
        rule["record"] for group in rules["groups"] for rule in group["rules"] if "record" in rule
    }
    assert "model:ts_queue_wait_ms:mean1m" in recorded
    assert "model:ts_queue_wait_ms:mean1m" in trigger["metadata"]["query"]
    assert float(trigger["metadata"]["threshold"]) > 0
    assert scaled["spec"]["minReplicaCount"] >= 2  # the PodDisruptionBudget keeps one of them


def test_the_inference_service_validates_and_runs_the_supervisor():
    doc = yaml.safe_load((DEPLOY / "kserve" / "inferenceservice.yaml").read_text())
    validate(doc)
    policy = yaml.safe_load((DEPLOY / "kserve" / "networkpolicy.yaml").read_text())
    validate(policy)  # with TorchServe's token check off, only the ingress may call it
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector == {"serving.kserve.io/inferenceservice": doc["metadata"]["name"]}
    model = doc["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "v2" and model["modelFormat"]["name"] == "pytorch"
    args = serve_cli.build_parser().parse_args(model["args"][2:])
    assert args.config == Path("/mnt/models/config/config.properties")
    assert args.model_store == Path("/mnt/models/model-store")
    assert {"name": "TS_SERVICE_ENVELOPE", "value": ""} in model["env"]


def test_yamllint_passes():
    result = subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", str(DEPLOY)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
