"""One serde for every topic: JSON bytes of the pydantic model, type and version in headers.

Decoding is total: whatever bytes a publisher puts on a topic come back as a valid event or as a
PoisonMessageError whose message says what to fix. Size and nesting depth are checked on the raw
bytes before any parser runs (a 10,000-level `[[[[...` makes `json.loads` raise RecursionError, a type
no runner expects), and every exception the parser or the validators can raise is turned into a reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from engine.records import Headers
from infra.settings import DecodeSettings
from kernel.errors import PoisonMessageError
from schemas import headers
from schemas.events import SCHEMA_VERSION
from schemas.reasons import explain
from schemas.topics import TopicSpec

SUPPORTED_SCHEMA_VERSIONS = frozenset({SCHEMA_VERSION})
DEFAULT_LIMITS = DecodeSettings()

#: A JSON string literal (the unrolled form matches in linear time, whatever the input).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true/false",
               type(None): "null"}
_DEPTH_STEP = np.zeros(256, dtype=np.int8)
_DEPTH_STEP[[ord("["), ord("{")]] = 1
_DEPTH_STEP[[ord("]"), ord("}")]] = -1


def encode(event: BaseModel) -> bytes:
    return event.model_dump_json().encode("utf-8")


def headers_for(event: BaseModel) -> Headers:
    kind = getattr(event, "type", type(event).__name__)
    return [
        (headers.CONTENT_TYPE, b"application/json"),
        (headers.TYPE, str(kind).encode()),
        (headers.SCHEMA_VERSION, str(getattr(event, "schema_version", SCHEMA_VERSION)).encode()),
        (headers.CORRELATION_ID, str(getattr(event, "correlation_id", "")).encode()),
    ]


def summarize(exc: ValidationError, models: Sequence[type[BaseModel]] = (), limit: int = 3) -> str:
    """The validation errors as sentences that name the field and what was expected (schemas/reasons.py)."""
    return explain(exc, models, limit)


def json_depth(raw: bytes) -> int:
    """How deeply the JSON text nests arrays and objects (brackets inside strings do not count)."""
    skeleton = _STRING.sub(b"", raw)
    steps = _DEPTH_STEP[np.frombuffer(skeleton, dtype=np.uint8)]
    return int(np.cumsum(steps, dtype=np.int64).max(initial=0))


def _parse(raw: bytes, limits: DecodeSettings) -> object:
    if len(raw) > limits.max_bytes:
        raise PoisonMessageError(f"message value is {len(raw)} bytes, over the limit of {limits.max_bytes} "
                                 "(RAGBUS_DECODE_MAX_BYTES): send large content by reference")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PoisonMessageError(f"value is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    depth = json_depth(raw)
    if depth > limits.max_depth:
        raise PoisonMessageError(f"JSON nests {depth} levels deep, over the limit of {limits.max_depth} "
                                 "(RAGBUS_DECODE_MAX_DEPTH)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PoisonMessageError(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}; expected one "
                                 "JSON object per message") from exc
    except Exception as exc:  # e.g. an integer literal longer than Python's digit limit (ValueError)
        raise PoisonMessageError(f"invalid JSON: {type(exc).__name__}: {str(exc)[:200]}") from exc


def decode(spec: TopicSpec, raw: bytes | None, limits: DecodeSettings = DEFAULT_LIMITS) -> Any:
    """Bytes to a validated event, or PoisonMessageError with a reason a human can act on. Never
    raises anything else."""
    if raw is None:
        raise PoisonMessageError("empty message value (tombstone) where an event was expected")
    data = _parse(raw, limits)
    if not isinstance(data, dict):
        got = _JSON_KINDS.get(type(data), "a value")
        raise PoisonMessageError(f"expected a JSON object (one event per message), got {got}")
    version = data.get("schema_version", SCHEMA_VERSION)
    if type(version) is not int or version not in SUPPORTED_SCHEMA_VERSIONS:
        raise PoisonMessageError(
            f"unsupported schema_version {json.dumps(version)[:40]}: expected field 'schema_version' to be one of "
            f"{', '.join(map(str, sorted(SUPPORTED_SCHEMA_VERSIONS)))}, the versions this reader handles")
    try:
        return spec.adapter().validate_python(data)
    except ValidationError as exc:
        raise PoisonMessageError(f"invalid {spec.name} event: {summarize(exc, spec.models())}") from exc
    except Exception as exc:  # a validator failing in a way pydantic does not wrap: still this event's fault
        raise PoisonMessageError(f"invalid {spec.name} event: {type(exc).__name__}: {str(exc)[:200]}") from exc
