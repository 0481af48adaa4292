"""Alert rules and scrape configurations, checked by promtool (the tool Prometheus' users run): the rules
parse (`check rules`), behave as their unit tests say (`test rules`: each alert fires on its failure and
not on a healthy system), a broken rule fails those tests, and the scrape configs load with the rules beside
them as the compose file and the Kubernetes setup mount them. Every metric and label is one the code exports."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, read, tool
from tests.deploy.promql import problems

PROM = DEPLOY / "prometheus"
RULES: dict[str, Any] = yaml.safe_load(read(PROM / "alerts.yml"))
ALERTS = {r["alert"]: r for g in RULES["groups"] for r in g["rules"]}


def promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_rules_pass_promtool_check() -> None:
    done = promtool("check", "rules", "alerts.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_rules_pass_their_unit_tests() -> None:
    done = promtool("test", "rules", "alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("alert", "old", "new"), [
    ("RagbusDeadLettersRising", "> 0.01", "> 0.1"),           # a threshold that misses the failure
    ("RagbusStageStalled", "ragbus_stage_stalled", "ragbus_stage_broken"),  # the wrong signal
    ("RagbusConsumerLagGrowing", "> 0\n", ">= 0\n"),          # a steady backlog would warn too
    ("RagbusFreshnessObjectiveMissed", '{kind="document"}', ""),  # fast queries would hide slow documents
])
def test_a_broken_rule_fails_the_unit_tests(tmp_path: Path, alert: str, old: str, new: str) -> None:
    text = read(PROM / "alerts.yml")
    start = text.index(f"- alert: {alert}")
    end = text.find("- alert:", start + 1)
    end = len(text) if end < 0 else end
    assert old in text[start:end], alert
    (tmp_path / "alerts.yml").write_text(text[:start] + text[start:end].replace(old, new, 1) + text[end:])
    shutil.copy(PROM / "alerts_test.yml", tmp_path)
    assert promtool("check", "rules", "alerts.yml", cwd=tmp_path).returncode == 0
    done = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert done.returncode != 0 and alert in done.stdout + done.stderr


def test_the_issue_s_alerts_exist_and_each_has_a_unit_test() -> None:
    wanted = {"RagbusStageStalled", "RagbusConsumerLagGrowing", "RagbusDeadLettersRising", "RagbusDegradedAnswers",
              "RagbusFreshnessObjectiveMissed"}
    assert wanted <= ALERTS.keys()
    tests = yaml.safe_load(read(PROM / "alerts_test.yml"))["tests"]
    tested = {case["alertname"] for t in tests for case in t["alert_rule_test"] if case.get("exp_alerts")}
    assert tested == ALERTS.keys(), f"alerts never shown to fire: {ALERTS.keys() - tested}"
    for name, rule in ALERTS.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_rules_and_their_tests_use_exported_metrics() -> None:
    found = {f"{name}: {p}" for name, rule in ALERTS.items() for p in problems(rule["expr"])}
    tests = yaml.safe_load(read(PROM / "alerts_test.yml"))["tests"]
    series = [s["series"] for t in tests for s in t["input_series"]]
    found |= {f"test series {s}: {p}" for s in series for p in problems(s)}
    assert found == set()


def _layout(tmp_path: Path, volumes: list[str], base: Path) -> Path:
    """Lay the files out as the compose service mounts them (host path relative to the compose file)."""
    root = tmp_path / "container"
    for volume in volumes:
        host, container = volume.split(":")[:2]
        target = root / container.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy((base / host).resolve(), target)
    return root


def test_the_compose_prometheus_config_loads_with_the_rules_it_mounts(tmp_path: Path) -> None:
    compose = yaml.safe_load(read(DEPLOY / "compose.yaml"))
    root = _layout(tmp_path, compose["services"]["prometheus"]["volumes"], DEPLOY)
    done = promtool("check", "config", str(root / "etc" / "prometheus" / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 9 rules found" in done.stdout


def test_the_compose_scrape_config_finds_every_worker_service() -> None:
    compose = yaml.safe_load(read(DEPLOY / "compose.yaml"))
    config = yaml.safe_load(read(PROM / "prometheus-compose.yml"))
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "ragbus")
    names = {n for sd in job["dns_sd_configs"] for n in sd["names"]}
    workers = {n for n, s in compose["services"].items() if s.get("profiles") == ["workers"] and n != "topics"}
    assert names == workers
    assert {sd["port"] for sd in job["dns_sd_configs"]} == {9400}


def test_the_kubernetes_scrape_config_loads() -> None:
    done = promtool("check", "config", "prometheus-kubernetes.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load(read(PROM / "prometheus-kubernetes.yml"))
    service = yaml.safe_load(read(DEPLOY / "kubernetes" / "metrics-service.yaml"))
    name = f"{service['metadata']['name']}.ragbus.svc.cluster.local"
    assert [n for sd in config["scrape_configs"][0]["dns_sd_configs"] for n in sd["names"]] == [name]


def test_the_service_monitor_selects_the_metrics_service() -> None:
    monitor = yaml.safe_load(read(PROM / "servicemonitor.yaml"))
    service = yaml.safe_load(read(DEPLOY / "kubernetes" / "metrics-service.yaml"))
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [p["name"] for p in service["spec"]["ports"]]
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "ragbus"  # RagbusWorkerDown's job
