"""The Kubernetes manifests: valid against the Kubernetes schemas (kubernetes-validate, strict: an unknown or
misspelt field fails), and shaped as the issue asks: a Deployment per stage with probes on the metrics port,
resource requests, config from the ConfigMap, credentials from the Secret, non-root; a metrics Service that
selects every stage; settings names that ragbus really reads."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas.stages import PIPELINE
from tests.deploy.conftest import DEPLOY, read, tool, unknown_settings

K8S = DEPLOY / "kubernetes"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
#: The oldest Kubernetes release the manifests are checked against, and the newest kubernetes-validate knows.
VERSIONS = ["1.29.0", "1.37.0"]


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(read(path)) if d]


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for p in MANIFESTS for d in docs(p) if d["kind"] == kind}


def validate(*paths: Path, version: str = VERSIONS[-1]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, *map(str, paths)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("version", VERSIONS)
def test_manifests_are_valid_kubernetes(version: str) -> None:
    done = validate(*MANIFESTS, version=version)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("old", "new"), [
    ("livenessProbe:", "livenesProbe:"),           # a misspelt field
    ("replicas: 2", "replicas: two"),              # a wrong type
    ("- name: embedder\n          image:", "- image:"),  # a required field missing
])
def test_the_validator_fails_a_broken_manifest(tmp_path: Path, old: str, new: str) -> None:
    text = read(K8S / "embedder.yaml")
    assert old in text
    broken = tmp_path / "embedder.yaml"
    broken.write_text(text.replace(old, new, 1))
    assert validate(broken).returncode != 0


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    listed = set(yaml.safe_load(read(K8S / "kustomization.yaml"))["resources"])
    assert listed == {p.name for p in MANIFESTS} - {"secret.example.yaml"}


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


@pytest.mark.parametrize("stage", PIPELINE.names())
def test_a_deployment_per_stage_runs_ragbus_worker_stage(stage: str) -> None:
    deployment = by_kind("Deployment")[f"ragbus-{stage}"]
    pod = deployment["spec"]["template"]
    c = _container(deployment)
    assert c["args"] == [stage] and "command" not in c, "the image's ENTRYPOINT is `ragbus worker`"
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == stage
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    sources = {ref.get("configMapRef", {}).get("name") or ref.get("secretRef", {}).get("name")
               for ref in c["envFrom"]}
    assert sources == {"ragbus-config", "ragbus-secrets"}
    port = {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"]
    config = by_kind("ConfigMap")["ragbus-config"]["data"]
    assert str(port) == config["RAGBUS_METRICS_PORT"]
    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz"), ("startupProbe", "/livez")):
        assert c[probe]["httpGet"] == {"path": path, "port": "metrics"}, probe
    requests = c["resources"]["requests"]
    assert {"cpu", "memory"} <= requests.keys() and "memory" in c["resources"]["limits"]
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/var/lib/ragbus", "/tmp"}
    # faust lets a batch in hand finish for 20 s after SIGTERM; the pod must be given longer
    assert pod["spec"]["terminationGracePeriodSeconds"] > 20
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_the_metrics_service_selects_every_stage() -> None:
    service = by_kind("Service")["ragbus-metrics"]
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"metrics"}
    selector = service["spec"]["selector"].items()
    for stage in PIPELINE.names():
        assert selector <= by_kind("Deployment")[f"ragbus-{stage}"]["spec"]["template"]["metadata"]["labels"].items()


def test_the_topics_job_runs_topics_create_with_the_same_config() -> None:
    job = by_kind("Job")["ragbus-topics"]
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["ragbus", "topics", "create"]
    assert {r.get("configMapRef", {}).get("name") for r in c["envFrom"]} >= {"ragbus-config"}


def test_config_and_secret_keys_are_settings_ragbus_reads() -> None:
    keys = set(by_kind("ConfigMap")["ragbus-config"]["data"]) | set(by_kind("Secret")["ragbus-secrets"]["stringData"])
    for deployment in by_kind("Deployment").values():
        keys |= {e["name"] for e in _container(deployment).get("env", [])}
    unknown = unknown_settings(keys)
    assert unknown == set(), f"no setting reads {sorted(unknown)}"


def test_the_config_map_parses_as_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from infra.settings import Settings

    env = by_kind("ConfigMap")["ragbus-config"]["data"] | by_kind("Secret")["ragbus-secrets"]["stringData"]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.kafka.partitions == int(env["RAGBUS_KAFKA_PARTITIONS"])
    assert settings.weaviate.url and settings.mongodb.uri is not None, "pods share only the production stores"


def test_the_autoscaler_stays_within_the_partitions() -> None:
    hpa = by_kind("HorizontalPodAutoscaler")["ragbus-embedder"]
    partitions = int(by_kind("ConfigMap")["ragbus-config"]["data"]["RAGBUS_KAFKA_PARTITIONS"])
    assert hpa["spec"]["scaleTargetRef"]["name"] in by_kind("Deployment")
    assert hpa["spec"]["maxReplicas"] <= partitions
