"""deploy/compose.yaml: valid against the Compose Specification's schema (check-jsonschema), every service
restarts and reports its health, Kafka has a listener for the compose network and one for the host, and the
worker containers run the image as the Dockerfile defines it."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from schemas.stages import PIPELINE
from tests.conftest import ROOT
from tests.deploy.conftest import read, tool, unknown_settings
from tests.deploy.image_file import exec_form
from tests.deploy.test_image import FINAL

PATH = ROOT / "deploy" / "compose.yaml"
COMPOSE: dict[str, Any] = yaml.safe_load(read(PATH))
SERVICES: dict[str, Any] = COMPOSE["services"]


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_compose_file_matches_the_compose_spec() -> None:
    done = check(PATH)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_schema_check_fails_a_broken_compose_file(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text(read(PATH).replace("    healthcheck:\n      test: [\"CMD\", \"wget\"",
                                         "    healtcheck:\n      test: [\"CMD\", \"wget\"", 1))
    assert broken.read_text() != read(PATH)
    assert check(broken).returncode != 0


def test_every_service_restarts_and_reports_its_health() -> None:
    for name, service in SERVICES.items():
        assert "healthcheck" in service, name
        if name == "topics":  # a one-shot job: retried until it succeeds, the workers wait for its completion
            assert service["restart"] == "on-failure" and service["healthcheck"] == {"disable": True}
            continue
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"] and service["healthcheck"]["retries"] >= 3, name


def _kafka_env() -> dict[str, str]:
    return {k: str(v) for k, v in SERVICES["kafka"]["environment"].items()}


def test_kafka_listens_inside_and_outside_the_compose_network() -> None:
    env = _kafka_env()
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) == set(protocols)
    assert set(advertised) == set(listeners) - {env["KAFKA_CONTROLLER_LISTENER_NAMES"]}
    hosts = {name: addr.rsplit(":", 1)[0] for name, addr in advertised.items()}
    inside = [n for n, h in hosts.items() if h == "kafka"]
    outside = [n for n, h in hosts.items() if "localhost" in h]
    assert inside and outside, advertised
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in inside
    ports = {f"{p.split(':')[0]}" for p in SERVICES["kafka"]["ports"]}
    assert {advertised[n].rsplit(":", 1)[1] for n in outside} <= ports, "the host listener's port is published"
    for name, service in SERVICES.items():
        bootstrap = (service.get("environment") or {}).get("RAGBUS_KAFKA_BOOTSTRAP_SERVERS")
        if bootstrap:
            assert bootstrap == advertised[inside[0]], f"{name} must use the compose-network listener"


def test_workers_run_the_image_one_stage_each() -> None:
    workers = {n: s for n, s in SERVICES.items() if s.get("profiles") == ["workers"] and n != "topics"}
    assert {n: s["command"] for n, s in workers.items()} == {stage: [stage] for stage in PIPELINE.names()}
    image_check = exec_form(FINAL.last("HEALTHCHECK"))
    for name, service in workers.items():
        assert (PATH.parent / service["build"]["context"] / "Dockerfile").exists(), name
        assert service["healthcheck"]["test"] == ["CMD", *image_check], name
        assert service["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        assert service["stop_grace_period"] == "60s"
    assert SERVICES["topics"]["entrypoint"] == ["ragbus", "topics", "create"]


def test_worker_settings_are_settings_ragbus_reads() -> None:
    keys = {k for s in SERVICES.values() if s.get("profiles") == ["workers"] for k in s.get("environment", {})}
    assert unknown_settings(keys) == set()
