"""The ragbus Grafana dashboard, as code: `make dashboard` writes deploy/grafana/ragbus.json.

Import the JSON into Grafana (Dashboards > New > Import) and pick the Prometheus data source; or provision
it from a ConfigMap with your Grafana's dashboard sidecar. Rows: overview, throughput, lag, freshness,
errors and dead letters, answers and language-model tokens and cost per model.

Plain Python rather than a dashboard SDK: the panels are a few dozen lines of data, the output is what
Grafana's import expects (schemaVersion 39), and tests/deploy/test_grafana.py checks its structure and
every query's metric names and labels against what the code exports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("ragbus.json")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
STAGE = 'stage=~"$stage"'


class Layout:
    """Places panels left to right in rows 24 units wide, each row below the previous one."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self._x = 0
        self._y = 0
        self._row_h = 0

    def _place(self, w: int, h: int) -> dict[str, int]:
        if self._x + w > 24:
            self._x, self._y, self._row_h = 0, self._y + self._row_h, 0
        pos = {"x": self._x, "y": self._y, "w": w, "h": h}
        self._x += w
        self._row_h = max(self._row_h, h)
        return pos

    def row(self, title: str) -> None:
        self._x, self._y, self._row_h = 0, self._y + self._row_h, 0
        self.panels.append({"id": len(self.panels) + 1, "type": "row", "title": title, "collapsed": False,
                            "gridPos": self._place(24, 1), "panels": []})
        self._x, self._y, self._row_h = 0, self._y + 1, 0

    def panel(self, kind: str, title: str, description: str, targets: list[tuple[str, str]], unit: str,
              w: int = 12, h: int = 8, **options: Any) -> None:
        refs = "ABCDEFGH"
        self.panels.append({
            "id": len(self.panels) + 1, "type": kind, "title": title, "description": description,
            "datasource": DATASOURCE, "gridPos": self._place(w, h),
            "targets": [{"refId": refs[i], "datasource": DATASOURCE, "expr": expr, "legendFormat": legend,
                         **({"instant": True, "format": "table"} if kind == "table" else {})}
                        for i, (expr, legend) in enumerate(targets)],
            "fieldConfig": {"defaults": {"unit": unit, **options.pop("defaults", {})}, "overrides": []},
            "options": options,
        })

    def stat(self, title: str, description: str, expr: str, unit: str, red_at: float | None = None) -> None:
        steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
        if red_at is not None:
            steps.append({"color": "red", "value": red_at})
        self.panel("stat", title, description, [(expr, "")], unit, w=4, h=4,
                   defaults={"thresholds": {"mode": "absolute", "steps": steps}},
                   reduceOptions={"calcs": ["lastNotNull"], "fields": "", "values": False}, colorMode="value")

    def series(self, title: str, description: str, targets: list[tuple[str, str]], unit: str, w: int = 12) -> None:
        self.panel("timeseries", title, description, targets, unit, w=w,
                   legend={"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max"]},
                   tooltip={"mode": "multi", "sort": "desc"})


#: Freshness of documents (event to searchable) and of queries (published to answered), one histogram.
DOCS = 'kind="document"'
QUERIES = 'kind="query"'


def _quantile(q: float, metric: str, by: str = "", matcher: str = "") -> str:
    group = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{matcher}}}[{RATE}])))"


#: Lag per partition counted once even if two processes reported it around a rebalance, then per stage.
LAG = f"max by (stage, topic, partition) (ragbus_consumer_lag{{{STAGE}}})"


def _overview(d: Layout) -> None:
    d.row("Overview")
    d.stat("Events/s", "Events every stage finished, per second",
           f'sum(rate(ragbus_events_total{{status="ok"}}[{RATE}]))', "ops")
    d.stat("Consumer lag", "Messages not yet consumed, all stages", f"sum({LAG})", "short")
    d.stat("Freshness p95", "Seconds from a document's event to its chunks being searchable (95th percentile)",
           _quantile(0.95, "ragbus_freshness_seconds", matcher=DOCS), "s", red_at=300)
    d.stat("Dead letters", "Events dead-lettered in the time range (`ragbus dlq list`)",
           'sum(increase(ragbus_events_total{status="dead_lettered"}[$__range]))', "short", red_at=1)
    d.stat("Stages stalled or broken", "Stages with lag and no progress, or with their failure breaker open",
           "sum(max by (stage) (ragbus_stage_stalled)) + sum(max by (stage) (ragbus_stage_broken))", "short",
           red_at=1)
    d.stat("LLM cost", "Estimated language-model cost in the time range",
           "sum(increase(ragbus_llm_cost_usd_total[$__range]))", "currencyUSD")


def _throughput_and_lag(d: Layout) -> None:
    d.row("Throughput")
    d.series("Events/s by stage and outcome", "ok, retried and dead_lettered events of each stage",
             [(f"sum by (stage, status) (rate(ragbus_events_total{{{STAGE}}}[{RATE}]))", "{{stage}} {{status}}")],
             "ops")
    d.series("Chunks/s by stage", "Chunks produced, embedded or indexed",
             [(f"sum by (stage) (rate(ragbus_chunks_total{{{STAGE}}}[{RATE}]))", "{{stage}}")], "ops")
    d.series("Batch duration by stage (p95)", "Time to handle one batch",
             [(_quantile(0.95, "ragbus_batch_seconds", "stage", STAGE), "{{stage}}")], "s")
    d.series("Embedding model time per batch", "The embedder is the pipeline's bottleneck",
             [(_quantile(0.5, "ragbus_embed_seconds"), "p50"), (_quantile(0.95, "ragbus_embed_seconds"), "p95")],
             "s", w=6)
    d.series("Embedding cache hit ratio", "Chunks whose vector was already cached (re-sent or updated documents)",
             [(f'sum(rate(ragbus_embedding_cache_total{{status="hit"}}[{RATE}])) / '
               f"sum(rate(ragbus_embedding_cache_total[{RATE}]))", "hit ratio")], "percentunit", w=6)

    d.row("Lag")
    d.series("Consumer lag by stage", "Fetch high-water mark minus committed offset, summed over partitions",
             [(f"sum by (stage) ({LAG})", "{{stage}}")], "short")
    d.series("Lag by partition (top 20)", "The partitions furthest behind: a hot key or a slow consumer",
             [(f"topk(20, {LAG})", "{{stage}} {{topic}}[{{partition}}]")], "short")


def _freshness_and_errors(d: Layout) -> None:
    d.row("Freshness")
    d.series("Document freshness: event to searchable", "Seconds from a document event's time to all its "
             "chunks being searchable", [(_quantile(q, "ragbus_freshness_seconds", matcher=DOCS), f"p{int(q * 100)}")
                                         for q in (0.5, 0.95, 0.99)], "s")
    d.series("Answer latency: query to answer", "Seconds from a query event to its answer (p50, p95), and the "
             "answerer's own time per query (p95)",
             [(_quantile(q, "ragbus_freshness_seconds", matcher=QUERIES), f"p{int(q * 100)}") for q in (0.5, 0.95)]
             + [(_quantile(0.95, "ragbus_answer_seconds"), "answerer p95")], "s")

    d.row("Errors and dead letters")
    d.series("Dead letters/s by stage", "Events sent to dlq.<stage>.v1; `ragbus dlq list --stage S` says why",
             [(f'sum by (stage) (rate(ragbus_events_total{{status="dead_lettered", {STAGE}}}[{RATE}]))', "{{stage}}")],
             "ops", w=8)
    d.series("Retries/s by stage", "Batches retried after a transient failure",
             [(f'sum by (stage) (rate(ragbus_events_total{{status="retried", {STAGE}}}[{RATE}]))', "{{stage}}")],
             "ops", w=8)
    d.series("Crashes and restarts", "Unexpected exceptions (each event isolated and dead-lettered) and "
             "consumer loop restarts",
             [(f"sum by (stage) (increase(ragbus_stage_crashes_total{{{STAGE}}}[{RATE}]))", "crashes {{stage}}"),
              (f"sum by (stage) (increase(ragbus_stage_restarts_total{{{STAGE}}}[{RATE}]))", "restarts {{stage}}")],
             "short", w=8)
    d.series("Stalled, broken and degraded stages", "1 while a stage is stalled (lag, no progress), broken (breaker "
             "open) or degraded (the answerer without its model)",
             [(f"max by (stage) (ragbus_stage_stalled{{{STAGE}}})", "stalled {{stage}}"),
              (f"max by (stage) (ragbus_stage_broken{{{STAGE}}})", "broken {{stage}}"),
              (f"max by (stage) (ragbus_stage_degraded{{{STAGE}}})", "degraded {{stage}}")], "short", w=24)


def _answers_and_build(d: Layout) -> None:
    d.row("Answers and language-model cost")
    d.series("Answers/s by status", "ok, cached, degraded (extractive fallback) and replayed answers",
             [(f"sum by (status) (rate(ragbus_answers_total[{RATE}]))", "{{status}}")], "ops", w=8)
    d.series("Degraded answer ratio", "Answers that fell back to the extractive model",
             [(f'sum(rate(ragbus_answers_total{{status="degraded"}}[{RATE}])) / '
               f"sum(rate(ragbus_answers_total[{RATE}]))", "degraded")], "percentunit", w=8)
    d.series("Citations dropped", "Citations that named no retrieved chunk",
             [(f"sum(increase(ragbus_citations_dropped_total[{RATE}]))", "dropped")], "short", w=8)
    d.series("LLM tokens/s by model and kind", "input, output, cache write and cache read tokens",
             [(f"sum by (model, kind) (rate(ragbus_llm_tokens_total[{RATE}]))", "{{model}} {{kind}}")], "short")
    d.series("LLM cost per hour by model", "Estimated US dollars per hour at the current rate",
             [(f"sum by (model) (rate(ragbus_llm_cost_usd_total[{RATE}])) * 3600", "{{model}}")], "currencyUSD")

    d.row("Build")
    d.panel("table", "Versions running", "Worker processes by ragbus version, commit and Python", [
        ("count by (version, revision, python) (ragbus_build_info)", "")], "short", w=24, h=5, showHeader=True)


def panels() -> list[dict[str, Any]]:
    d = Layout()
    for part in (_overview, _throughput_and_lag, _freshness_and_errors, _answers_and_build):
        part(d)
    return d.panels


def dashboard() -> dict[str, Any]:
    return {
        "uid": "ragbus-pipeline",
        "title": "ragbus",
        "description": "Event-driven RAG on Kafka: throughput, lag, freshness, errors, dead letters, answers and "
                       "language-model cost per stage",
        "tags": ["ragbus", "kafka", "rag"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "browser",
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "refresh": 1},
            {"name": "stage", "label": "Stage", "type": "query", "datasource": DATASOURCE,
             "query": {"query": "label_values(ragbus_events_total, stage)", "refId": "stage"},
             "definition": "label_values(ragbus_events_total, stage)", "refresh": 2, "multi": True,
             "includeAll": True, "allValue": ".*", "current": {"text": "All", "value": "$__all"}, "hide": 0,
             "sort": 1},
        ]},
        "panels": panels(),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, sort_keys=True) + "\n"


def main() -> None:
    OUT.write_text(render())
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
