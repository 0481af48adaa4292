"""Validation errors in words a publisher can act on: which field, what was expected, what came.

pydantic's own messages describe its internals ("Unable to extract tag using discriminator 'type'");
a dead-letter reason must instead say what to change in the event, e.g.
"missing field 'type': expected one of document.arrived, document.deleted". `explain` turns a
ValidationError of one of the contract's types into such a sentence per problem. No I/O in this module.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from .events import PATTERN_MEANINGS

#: loc elements pydantic adds for a member of a (non-discriminated) union; they name no field.
_UNION_LABELS = frozenset({"str", "int", "float", "bool", "constrained-str", "constrained-int",
                           "constrained-float"})

_SIMPLE = {
    "string_type": "a string",
    "string_unicode": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a JSON object",
    "model_type": "a JSON object",
    "model_attributes_type": "a JSON object",
    "list_type": "a JSON array",
    "uuid_type": "a UUID such as 0b6f3c1e-9d2a-4c55-8e1f-3a7d2b9c4e10",
    "uuid_parsing": "a UUID such as 0b6f3c1e-9d2a-4c55-8e1f-3a7d2b9c4e10",
    "datetime_type": "an ISO 8601 date-time with a timezone such as 2026-01-15T09:30:00Z",
    "datetime_parsing": "an ISO 8601 date-time with a timezone such as 2026-01-15T09:30:00Z",
    "datetime_from_date_parsing": "an ISO 8601 date-time with a timezone such as 2026-01-15T09:30:00Z",
    "timezone_aware": "an ISO 8601 date-time with a timezone such as 2026-01-15T09:30:00Z",
    "none_required": "null",
}


def _show(value: Any, limit: int = 60) -> str:
    """A short rendering of what the publisher sent (never the whole of a large value)."""
    if isinstance(value, str):
        return json.dumps(value if len(value) <= limit else value[:limit] + "...", ensure_ascii=False)
    if isinstance(value, dict):
        return "an object" if value else "{}"
    if isinstance(value, list):
        return f"an array of {len(value)}" if value else "[]"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _path(loc: Sequence[int | str]) -> tuple[str, str | None]:
    """(dotted field path, the dict key that was wrong if the error is about a key)."""
    parts: list[str] = []
    key = None
    for i, item in enumerate(loc):
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item == "[key]":
            key = str(loc[i - 1]) if i else None
            if parts:
                parts.pop()
        elif (i == len(loc) - 1 and item in _UNION_LABELS) or "[" in item or item.startswith("function-"):
            continue
        else:
            parts.append(("." if parts else "") + item)
    return "".join(parts), key


def _expected(err: dict[str, Any]) -> str | None:
    """What the field should have been, from the error's type and context."""
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind in _SIMPLE:
        return _SIMPLE[kind]
    if kind == "string_too_long":
        return f"at most {ctx['max_length']} characters"
    if kind == "string_too_short":
        return "a non-empty string" if ctx.get("min_length") == 1 else f"at least {ctx['min_length']} characters"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        return PATTERN_MEANINGS.get(pattern, f"a string matching {pattern}")
    if kind in ("too_long", "too_short"):
        bound = "at most" if kind == "too_long" else "at least"
        things = "entries" if ctx.get("field_type") == "Dictionary" else "items"
        return f"{bound} {ctx.get('max_length', ctx.get('min_length'))} {things}"
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if kind in bounds:
        value = next(iter(ctx.values()), "?")
        return f"a number {bounds[kind]} {value}"
    if kind in ("enum", "literal_error"):
        return f"one of {ctx.get('expected', '?')}"
    return None


def _got(err: dict[str, Any]) -> str:
    value = err.get("input")
    if err["type"] == "string_too_long" and isinstance(value, str):
        return f"{len(value)} characters"
    if err["type"] == "too_long" and isinstance(value, dict | list):
        return f"{len(value)}"
    return _show(value)


def _describe(schema: dict[str, Any], defs: dict[str, Any]) -> str | None:
    """A JSON Schema fragment in words: "a string of 1 to 512 characters", "one of a, b"."""
    if "$ref" in schema:
        target = defs.get(str(schema["$ref"]).rsplit("/", 1)[-1], {})
        fields = ", ".join(target.get("required", [])) or "its fields"
        return f"an object with {fields}"
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return "one of " + ", ".join(str(v) for v in schema["enum"])
    if "anyOf" in schema:
        options = [d for d in (_describe(s, defs) for s in schema["anyOf"] if s.get("type") != "null") if d]
        return _or(options) if options else None
    kind = schema.get("type")
    if kind == "string":
        if "pattern" in schema:
            return PATTERN_MEANINGS.get(schema["pattern"], f"a string matching {schema['pattern']}")
        low, high = schema.get("minLength"), schema.get("maxLength")
        if low and high:
            return f"a string of {low} to {high} characters"
        return f"a string of at most {high} characters" if high else "a non-empty string" if low else "a string"
    if kind == "integer":
        return f"an integer >= {schema['minimum']}" if "minimum" in schema else "an integer"
    return {"number": "a number", "boolean": "true or false", "object": "a JSON object",
            "array": "a JSON array"}.get(str(kind))


def _field_schema(model: type[BaseModel] | None, loc: Sequence[int | str]) -> str | None:
    """What the model expects at `loc` (field names only), in words."""
    if model is None:
        return None
    schema = model.model_json_schema()
    defs, node = schema.get("$defs", {}), schema

    def deref(node: dict[str, Any]) -> dict[str, Any]:
        for option in node.get("anyOf", []):  # an optional object: the object
            if "$ref" in option:
                node = option
        return dict(defs.get(str(node["$ref"]).rsplit("/", 1)[-1], {})) if "$ref" in node else node

    for item in loc:
        node = deref(node)
        found = node.get("items") if isinstance(item, int) else node.get("properties", {}).get(item)
        if found is None:
            return None
        node = found
    return _describe(node, defs)


def _where(field: str, key: str | None) -> str:
    return f"key {_show(key)} of field '{field}'" if key is not None else f"field '{field or '(value)'}'"


def _or(options: Sequence[str]) -> str:
    return options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"


def _one(err: dict[str, Any], field: str, key: str | None, tags: Sequence[str], discriminator: str,
         model: type[BaseModel] | None) -> str:
    """The sentence for one pydantic error."""
    kind = err["type"]
    if kind == "union_tag_not_found":
        return f"missing field '{discriminator}': expected one of {', '.join(tags)}"
    if kind == "union_tag_invalid":
        return f"field '{discriminator}' is {_show(err['ctx'].get('tag'))}: expected one of {', '.join(tags)}"
    if kind == "missing":
        wanted = _field_schema(model, err["loc"][1:] if tags and err["loc"][0] in tags else err["loc"])
        return f"missing field '{field}'" + (f": expected {wanted}" if wanted else "")
    if kind in ("value_error", "assertion_error"):
        text = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        return f"field '{field}': {text}" if field else text
    expected = _expected(err)
    if expected is None:
        return f"{_where(field, key)}: {err['msg']}, got {_got(err)}"
    return f"{_where(field, key)}: expected {expected}, got {_got(err)}"


def explain(exc: ValidationError, models: Sequence[type[BaseModel]] = (), limit: int = 3) -> str:
    """One sentence per wrong field (at most `limit`, then how many more), naming the field and what was
    expected. `models` are the event types the value could have been (for a missing or unknown `type`)."""
    tags = [str(m.model_fields["type"].default) for m in models if "type" in m.model_fields]
    by_tag = dict(zip(tags, models, strict=False))
    sentences: list[str] = []
    unions: dict[tuple[str, str | None], tuple[int, list[str]]] = {}
    for raw in exc.errors():
        err: dict[str, Any] = dict(raw)
        loc: list[int | str] = list(raw["loc"])
        model = models[0] if len(models) == 1 else None
        if tags and loc and loc[0] in tags:  # the member of a discriminated union pydantic chose
            model, loc = by_tag.get(str(loc[0])), loc[1:]
        field, key = _path(loc)
        if loc and isinstance(loc[-1], str) and loc[-1] in _UNION_LABELS:
            # one error per member of a union ("a string or an integer or ..."): one sentence for all
            expected = _expected(err) or str(err["msg"])
            if (field, key) in unions:
                unions[(field, key)][1].append(expected)
                continue
            unions[(field, key)] = (len(sentences), [expected])
            sentences.append(f"{_where(field, key)}: expected {{}}, got {_got(err)}")
            continue
        sentences.append(_one(err, field, key, tags, "type", model))
    for at, options in unions.values():
        sentences[at] = sentences[at].replace("{}", _or(list(dict.fromkeys(options))), 1)
    more = len(sentences) - limit
    return "; ".join(sentences[:limit]) + (f" (+{more} more)" if more > 0 else "")
