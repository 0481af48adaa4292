"""Schema evolution (docs/schemas.md): events of the previous release are still read, and today's
schemas only add to the previous release's. The fixtures in tests/data are frozen: never regenerate them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.serde import SUPPORTED_SCHEMA_VERSIONS, decode
from schemas import generate
from schemas.events import SCHEMA_VERSION
from schemas.stages import PIPELINE
from schemas.topics import TopicSpec
from tests.conftest import ROOT

DATA = ROOT / "tests" / "data"
PREVIOUS = sorted((DATA / "events-v1").glob("*.json"))
BASELINE = sorted((DATA / "jsonschema-v1-baseline").glob("*.json"))


def _spec(event_type: str) -> TopicSpec:
    return next(s for s in PIPELINE.topics() if event_type in s.event_types())


def test_the_fixtures_are_there() -> None:
    assert len(PREVIOUS) == 12 and len(BASELINE) == 9


@pytest.mark.parametrize("path", PREVIOUS, ids=lambda p: p.stem)
def test_an_event_of_the_previous_release_is_still_read(path: Path) -> None:
    raw = path.read_bytes()
    data = json.loads(raw)
    event = decode(_spec(data.get("type", "query.requested")), raw)
    again = json.loads(event.model_dump_json())
    for key, value in data.items():  # nothing it said is lost or changed (fields added since may appear)
        assert _said(value, again[key]), (path.stem, key)


def _said(old: Any, new: Any) -> bool:
    """`new` says everything `old` said: equal, except that objects may have gained fields."""
    if isinstance(old, dict):
        return isinstance(new, dict) and all(k in new and _said(v, new[k]) for k, v in old.items())
    if isinstance(old, list):
        return isinstance(new, list) and len(old) == len(new) and all(map(_said, old, new))
    return bool(old == new)


def test_every_schema_version_ever_written_is_still_read() -> None:
    """A breaking change bumps SCHEMA_VERSION and keeps a reader for the old one (docs/schemas.md)."""
    assert set(range(1, SCHEMA_VERSION + 1)) <= SUPPORTED_SCHEMA_VERSIONS


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """A $ref's target; for an optional object (anyOf object/null) the object."""
    refs = [n for n in node.get("anyOf", []) if "$ref" in n]
    if len(refs) == 1 and all("$ref" in n or n.get("type") == "null" for n in node["anyOf"]):
        node = refs[0]
    if "$ref" in node:
        return dict(schema.get("$defs", {}).get(node["$ref"].rsplit("/", 1)[-1], {}))
    return node


def _types(schema: dict[str, Any], node: dict[str, Any]) -> set[str]:
    if "anyOf" in node:
        return set().union(*(_types(schema, n) for n in node["anyOf"]))
    node = _resolve(schema, node)
    if "$ref" in node or "properties" in node:
        return {"object"}
    if "enum" in node or "const" in node:
        return {"string"} if all(isinstance(v, str) for v in node.get("enum", [node.get("const")])) else {"any"}
    return {str(node.get("type", "any"))}


def _changes(old: dict[str, Any], new: dict[str, Any], where: str, old_root: dict[str, Any],
             new_root: dict[str, Any]) -> list[str]:
    """What a reader of the old schema or a producer of old events would trip over."""
    found = []
    old, new = _resolve(old_root, old), _resolve(new_root, new)
    added_required = set(new.get("required", [])) - set(old.get("required", []))
    if added_required:
        found.append(f"{where}: newly required {sorted(added_required)}")
    for name, old_prop in old.get("properties", {}).items():
        new_prop = new.get("properties", {}).get(name)
        if new_prop is None:
            found.append(f"{where}.{name}: removed")
            continue
        if not _types(old_root, old_prop) <= _types(new_root, new_prop):
            found.append(f"{where}.{name}: type {_types(old_root, old_prop)} -> {_types(new_root, new_prop)}")
        old_enum = set(_resolve(old_root, old_prop).get("enum", []))
        if old_enum - set(_resolve(new_root, new_prop).get("enum", old_enum)):
            found.append(f"{where}.{name}: enum values removed")
        if "properties" in _resolve(old_root, old_prop):
            found += _changes(old_prop, new_prop, f"{where}.{name}", old_root, new_root)
    return found


@pytest.mark.parametrize("path", BASELINE, ids=lambda p: p.stem)
def test_todays_schema_only_adds_to_the_previous_release(path: Path) -> None:
    old = json.loads(path.read_text())
    new = json.loads((generate.OUT / path.name).read_text())
    assert _changes(old, new, path.stem, old, new) == []


def test_the_compatibility_check_bites() -> None:
    old = json.loads((DATA / "jsonschema-v1-baseline" / "DocumentArrived.json").read_text())
    new = json.loads(json.dumps(old))
    new["required"].append("title")
    del new["properties"]["source"]
    new["properties"]["version"] = {"type": "string"}
    new["$defs"]["ContentRef"]["required"].append("extra")
    assert len(_changes(old, new, "DocumentArrived", old, new)) == 4
