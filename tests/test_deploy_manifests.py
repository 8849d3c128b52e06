"""The deploy files validate offline: compose against the Compose spec, Kubernetes core kinds against their
OpenAPI schemas (kubernetes-validate), the KEDA ScaledObject against its CRD's schema (tests/schemas)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from hive_framework.config import HiveConfig

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "deploy" / "compose.yaml"
K8S = ROOT / "deploy" / "kubernetes"
KEDA_SCHEMA = Path(__file__).parent / "schemas" / "keda-scaledobject-v1alpha1.json"
K8S_VERSION = "1.30.0"

_VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ``${VAR}`` / ``${VAR:-default}`` substitution, which runs before Compose validates a file."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, str):
        full = _VAR.fullmatch(value)
        text = _VAR.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
        if full and text.isdigit():
            return int(text)  # YAML would read the substituted text as a number
        return text
    return value


def compose_schema() -> dict[str, Any]:
    text = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    return dict(json.loads(text))


def load_compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    return dict(interpolate(yaml.safe_load(COMPOSE.read_text()), env or {}))


def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


# --- compose --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("env", [{}, {"HIVE_SPORES": "5", "HIVE_PLUGINS": "security_scan ota"}])
def test_compose_file_follows_the_compose_spec(env: dict[str, str]) -> None:
    jsonschema.validate(load_compose(env), compose_schema())


def test_compose_validation_catches_a_broken_file() -> None:
    broken = load_compose()
    broken["services"]["spore"]["deploy"]["replicas"] = "many"
    broken["services"]["redis"]["restart"] = ["always"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, compose_schema())


def test_compose_stack_has_what_the_issue_asks() -> None:
    stack = load_compose({"HIVE_SPORES": "3"})
    services = stack["services"]
    redis = services["redis"]
    assert "--appendonly" in redis["command"] and "yes" in redis["command"]
    assert any(v.endswith(":/data") for v in redis["volumes"]) and "redis_data" in stack["volumes"]
    assert services["spore"]["deploy"]["replicas"] == 3
    for name in ("redis", "nexus", "spore"):
        assert services[name]["restart"] == "unless-stopped"
    assert services["nexus"]["healthcheck"]["test"][1:] == ["hive", "health", "--nexus"]
    assert services["spore"]["healthcheck"]["test"][1:] == ["hive", "health", "--spore-here"]
    # every variable the hive containers get is a setting hive knows (an unknown HIVE_* name fails at start)
    for name in ("nexus", "spore"):
        HiveConfig.load(environ={k: str(v) for k, v in services[name]["environment"].items()},
                        env_file="/dev/null", toml_file=None)
    grace = float(services["spore"]["environment"]["HIVE_SHUTDOWN_GRACE"])
    assert int(services["spore"]["stop_grace_period"].rstrip("s")) >= grace + 10


# --- kubernetes -----------------------------------------------------------------------------------------


def test_every_core_manifest_validates_against_kubernetes_schemas() -> None:
    checked = []
    for name, doc in k8s_documents():
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        checked.append(f"{name}:{doc['kind']}")
    assert sorted(checked) == sorted([
        "config.yaml:ConfigMap", "namespace.yaml:Namespace", "nexus.yaml:Deployment", "nexus.yaml:Service",
        "redis.yaml:Service", "redis.yaml:StatefulSet", "spore.yaml:Deployment",
    ])


def test_kubernetes_validation_catches_a_broken_manifest() -> None:
    spore = next(doc for name, doc in k8s_documents() if name == "spore.yaml")
    spore["spec"]["template"]["spec"]["terminationGracePeriod"] = 30  # misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(spore, K8S_VERSION, strict=True)


def test_scaled_object_validates_against_the_keda_crd_schema() -> None:
    schema = json.loads(KEDA_SCHEMA.read_text())
    (scaled,) = [doc for _, doc in k8s_documents() if doc["kind"] == "ScaledObject"]
    jsonschema.validate(scaled, schema)
    broken = json.loads(json.dumps(scaled))
    broken["spec"]["triggers"][0]["metadata"]["lagCount"] = 20  # KEDA metadata values are strings
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_scaled_object_reads_the_streams_engines_group() -> None:
    from hive_framework import MessageBroker
    from hive_framework.engines.streams import GROUP, StreamsEngine
    from hive_framework.kernel import Kernel

    config = HiveConfig.load(environ={}, env_file="/dev/null", toml_file=None)
    kernel = Kernel(config)
    engine = StreamsEngine(config)
    MessageBroker(kernel, engine=engine)
    (scaled,) = [doc for _, doc in k8s_documents() if doc["kind"] == "ScaledObject"]
    deployments = {doc["metadata"]["name"] for _, doc in k8s_documents() if doc["kind"] == "Deployment"}
    assert scaled["spec"]["scaleTargetRef"]["name"] in deployments
    streams = set()
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["type"] == "redis-streams"
        meta = trigger["metadata"]
        assert meta["consumerGroup"] == GROUP and "lagCount" in meta
        streams.add(meta["stream"])
    assert streams == {engine.type_stream(10, "resize"), engine.type_stream(0, "resize")}  # the example type


def test_spore_grace_and_probes_match_the_spore() -> None:
    docs = dict((doc["metadata"]["name"], doc) for _, doc in k8s_documents())
    config = docs["hive-config"]["data"]
    HiveConfig.load(environ=config, env_file="/dev/null", toml_file=None)
    pod = docs["hive-spore"]["spec"]["template"]["spec"]
    # the spore waits HIVE_SHUTDOWN_GRACE for running tasks, then up to 10 s to hand the rest back
    assert pod["terminationGracePeriodSeconds"] == float(config["HIVE_SHUTDOWN_GRACE"]) + 10
    (container,) = pod["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["exec"]["command"] == ["hive", "health", "--spore-here"]
    nexus = docs["hive-nexus"]["spec"]["template"]["spec"]["containers"][0]
    assert nexus["livenessProbe"]["exec"]["command"] == ["hive", "health", "--nexus"]
    assert docs["hive-nexus"]["spec"]["replicas"] == 2


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    images = {i["name"] for i in kustomization["images"]}
    used = {c["image"].split(":")[0] for _, doc in k8s_documents() if doc["kind"] == "Deployment"
            for c in doc["spec"]["template"]["spec"]["containers"]}
    assert used <= images


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (for `kubectl kustomize`) is not installed")
def test_kustomize_build_renders_valid_manifests() -> None:
    rendered = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=120,
                              check=True).stdout
    docs = [doc for doc in yaml.safe_load_all(rendered) if doc]
    assert len(docs) == len(k8s_documents())
    schema = json.loads(KEDA_SCHEMA.read_text())
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "hive", doc["metadata"]["name"]
        if doc["apiVersion"].startswith("keda.sh/"):
            jsonschema.validate(doc, schema)
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
