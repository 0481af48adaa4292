"""What the dashboard and the alert rules may query: the metric families the code really exports, read from
the metrics object itself, so a rename on either side fails the tests that use this."""

from __future__ import annotations

import re
from functools import cache

#: Labels Prometheus itself adds to every scraped series, or that a histogram's buckets carry.
SCRAPE_LABELS = {"instance", "job"}
#: The series a family is scraped as (ragbus disables the *_created series).
_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"),
             "summary": ("", "_sum", "_count"), "info": ("_info",), "stateset": ("",), "enum": ("",)}


@cache
def exported() -> dict[str, frozenset[str]]:
    """Series name -> its label names, for every ragbus family the code declares (all stages' registries)."""
    from prometheus_client import CollectorRegistry

    from infra.ops.metrics import Metrics
    from schemas.stages import PIPELINE

    metrics = Metrics(CollectorRegistry(), PIPELINE.names())
    out: dict[str, frozenset[str]] = {}
    for wrapper, _ in metrics._declared:  # every family with the stages that export it
        labels = frozenset(wrapper._labelnames)  # prometheus_client keeps them here; no public accessor
        for family in wrapper.describe():
            for suffix in _SUFFIXES[family.type]:
                out[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else frozenset())
    assert all(name in out or f"{name}_bucket" in out for name in metrics.exported())
    return out


_NAME = re.compile(r"\b(ragbus_[a-z0-9_]+)\b(\{[^}]*\})?")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"([^\"]*)\"")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")


def problems(expr: str, extra_labels: frozenset[str] = frozenset()) -> list[str]:
    """Names and labels in a PromQL expression that no exported metric has."""
    known = exported()
    out = []
    names = []
    for match in _NAME.finditer(expr):
        name, selector = match.group(1), match.group(2) or ""
        if name not in known:
            out.append(f"{name} is not exported")
            continue
        names.append(name)
        for label, value in _MATCHER.findall(selector):
            if label not in known[name] | SCRAPE_LABELS | extra_labels:
                out.append(f"{name} has no label {label!r}")
            else:
                out.extend(_value_problems(name, label, value))
    grouped = {lbl.strip() for group in _GROUPING.findall(expr) for lbl in group.split(",") if lbl.strip()}
    if names:
        available = set().union(*(known[n] for n in names)) | SCRAPE_LABELS | extra_labels
        out.extend(f"no metric in the expression has label {lbl!r}" for lbl in sorted(grouped - available))
    return out


def _value_problems(name: str, label: str, value: str) -> list[str]:
    """Label values that the code draws from an enum must be one of its members."""
    from infra.ops.metrics import Freshness, Outcome

    enums: dict[tuple[str, str], type[Outcome] | type[Freshness]] = {
        ("ragbus_events_total", "status"): Outcome, ("ragbus_freshness_seconds_bucket", "kind"): Freshness,
        ("ragbus_freshness_seconds_count", "kind"): Freshness, ("ragbus_freshness_seconds_sum", "kind"): Freshness}
    enum = enums.get((name, label))
    if enum is None:
        return []
    allowed = {member.value for member in enum}
    return [f"{name} {label} {v!r} is not a {enum.__name__}" for v in value.split("|") if v not in allowed]


def names_in(expr: str) -> set[str]:
    return {m.group(1) for m in _NAME.finditer(expr)}
