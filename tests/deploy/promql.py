"""What the dashboard and the alert rules may query: the metric families the code really exports, read from
the metrics object itself, so a rename on either side fails the tests that use this."""

from __future__ import annotations

import re
from functools import cache

#: Families the artefacts use that the observability issue (14) adds. Until they exist on this branch they
#: are left out of the name and label checks and tests/deploy/test_pending.py expects them to be missing
#: (strictly: the day they exist that test fails, so whoever merges both removes them from here).
PENDING_METRICS = {
    "ragbus_freshness_seconds": "issue 14 adds the freshness histogram (document event -> searchable)",
    "ragbus_build_info": "issue 14 adds ragbus_build_info",
}
#: Labels Prometheus itself adds to every scraped series, or that a histogram's buckets carry.
SCRAPE_LABELS = {"instance", "job"}
_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count", "_created"),
             "summary": ("", "_sum", "_count", "_created"), "info": ("_info",), "stateset": ("",), "enum": ("",)}


@cache
def exported() -> dict[str, frozenset[str]]:
    """Series name -> its label names, for every metric the code registers (built on a fresh registry)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics import MetricWrapperBase

    from infra.ops.metrics import Metrics

    registry = CollectorRegistry()
    metrics = Metrics(registry)
    out: dict[str, frozenset[str]] = {}
    for wrapper in vars(metrics).values():
        if not isinstance(wrapper, MetricWrapperBase):
            continue
        labels = frozenset(wrapper._labelnames)  # prometheus_client keeps them here; no public accessor
        for family in wrapper.describe():
            for suffix in _SUFFIXES[family.type]:
                out[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else frozenset())
    registered = {f.name for f in registry.collect()}
    covered = {name.removesuffix(s) for name in out for s in ("_total", "_bucket", "_info") if name.endswith(s)}
    covered |= set(out)
    assert registered <= covered, f"metrics registered outside the Metrics attributes: {registered - covered}"
    return out


def pending(name: str) -> str | None:
    for family, why in PENDING_METRICS.items():
        if name == family or name.startswith(family + "_"):
            return why
    return None


_NAME = re.compile(r"\b(ragbus_[a-z0-9_]+)\b(\{[^}]*\})?")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"([^\"]*)\"")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")


def problems(expr: str, extra_labels: frozenset[str] = frozenset()) -> list[str]:
    """Names and labels in a PromQL expression that no exported metric has (pending families skipped)."""
    known = exported()
    out = []
    names = []
    for match in _NAME.finditer(expr):
        name, selector = match.group(1), match.group(2) or ""
        if pending(name):
            continue
        if name not in known:
            out.append(f"{name} is not exported")
            continue
        names.append(name)
        for label, value in _MATCHER.findall(selector):
            if label not in known[name] | SCRAPE_LABELS | extra_labels:
                out.append(f"{name} has no label {label!r}")
            elif name == "ragbus_events_total" and label == "status":
                out.extend(_status_problems(value))
    grouped = {lbl.strip() for group in _GROUPING.findall(expr) for lbl in group.split(",") if lbl.strip()}
    if names:
        available = set().union(*(known[n] for n in names)) | SCRAPE_LABELS | extra_labels
        out.extend(f"no metric in the expression has label {lbl!r}" for lbl in sorted(grouped - available))
    return out


def _status_problems(value: str) -> list[str]:
    from infra.ops.metrics import Outcome

    allowed = {o.value for o in Outcome}
    return [f"ragbus_events_total status {v!r} is not an Outcome" for v in value.split("|") if v not in allowed]


def names_in(expr: str) -> set[str]:
    return {m.group(1) for m in _NAME.finditer(expr)}
