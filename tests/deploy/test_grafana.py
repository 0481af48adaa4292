"""The Grafana dashboard (Grafana itself does not install here, so its JSON is checked structurally): it is
what deploy/grafana/dashboard.py generates, it lays out and wires up as Grafana's import expects, it covers
what the issue asks, and every query names only metrics and labels the code exports."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, read, tool
from tests.deploy.promql import names_in, problems

PATH = DEPLOY / "grafana" / "ragbus.json"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ragbus_dashboard", DEPLOY / "grafana" / "dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DASHBOARD: dict[str, Any] = json.loads(read(PATH))
PANELS = [p for p in DASHBOARD["panels"] if p["type"] != "row"]
EXPRS = [(p["title"], t["expr"]) for p in PANELS for t in p["targets"]]


def test_the_committed_json_is_what_the_generator_writes() -> None:
    assert read(PATH) == _generator().render(), "deploy/grafana/ragbus.json is stale: run `make dashboard`"


def test_every_query_names_exported_metrics_and_labels() -> None:
    found = {f"{title}: {p}" for title, expr in EXPRS for p in problems(expr)}
    assert found == set()


#: What Grafana substitutes before a query reaches Prometheus, for checking the queries without Grafana.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "6h", "$__interval": "15s", "$stage": ".*"}


def _as_rules(exprs: list[str], path: Path) -> None:
    rules = []
    for i, expr in enumerate(exprs):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"ragbus_dashboard:query_{i}", "expr": expr})
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query (as a recording rule), with Grafana's variables substituted."""
    _as_rules([expr for _, expr in EXPRS], tmp_path / "queries.yml")
    done = subprocess.run([tool("promtool"), "check", "rules", str(tmp_path / "queries.yml")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    _as_rules(["sum by (stage) (rate(ragbus_events_total[$__rate_interval])"], tmp_path / "broken.yml")
    broken = subprocess.run([tool("promtool"), "check", "rules", str(tmp_path / "broken.yml")], capture_output=True,
                            text=True, timeout=120)
    assert broken.returncode != 0, "promtool must reject an unbalanced query"


def test_a_renamed_metric_is_caught() -> None:
    """The check above can fail: a query on a name the code does not export is reported."""
    assert problems("sum(rate(ragbus_events_processed_total[5m]))") == ["ragbus_events_processed_total is not exported"]
    assert problems('sum by (tenant) (rate(ragbus_events_total{stage="x"}[5m]))') == [
        "no metric in the expression has label 'tenant'"]
    assert problems('rate(ragbus_events_total{status="failed"}[5m])') == [
        "ragbus_events_total status 'failed' is not a Outcome"]
    assert problems('rate(ragbus_freshness_seconds_bucket{kind="docs"}[5m])') == [
        "ragbus_freshness_seconds_bucket kind 'docs' is not a Freshness"]


@pytest.mark.parametrize(("topic", "pattern"), [
    ("throughput", r"rate\(ragbus_events_total"),
    ("lag", r"ragbus_consumer_lag"),
    ("freshness", r'ragbus_freshness_seconds_bucket\{kind="document"'),
    ("errors", r'status="retried"|ragbus_stage_crashes_total'),
    ("dead letters", r'status="dead_lettered"'),
    ("LLM tokens per model", r"sum by \(model, kind\) \(rate\(ragbus_llm_tokens_total"),
    ("LLM cost per model", r"sum by \(model\) \(rate\(ragbus_llm_cost_usd_total"),
])
def test_the_dashboard_covers(topic: str, pattern: str) -> None:
    assert any(re.search(pattern, expr) for _, expr in EXPRS), topic


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids)
    cells: dict[tuple[int, int], str] = {}
    for p in DASHBOARD["panels"]:
        g = p["gridPos"]
        assert g["w"] >= 1 and g["h"] >= 1 and g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


def test_queries_use_the_datasource_variable_and_defined_variables() -> None:
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for p in PANELS:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)) and all(refs), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["datasource"] == p["datasource"]
            used = set(re.findall(r"\$(\w+)", t["expr"])) - {"__rate_interval", "__range", "__interval"}
            assert used <= variables.keys(), f"{p['title']}: undefined {used - variables.keys()}"
    stage = variables["stage"]
    assert names_in(stage["definition"]) <= {"ragbus_events_total"} and stage["includeAll"]


def test_grafana_import_fields() -> None:
    assert DASHBOARD["uid"] and len(DASHBOARD["uid"]) <= 40 and DASHBOARD["title"]
    assert DASHBOARD["schemaVersion"] >= 36
    assert {p["type"] for p in PANELS} <= {"timeseries", "stat", "table"}
    for p in PANELS:
        assert p["title"] and p["description"] and "unit" in p["fieldConfig"]["defaults"], p["title"]
