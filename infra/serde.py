"""One serde for every topic: JSON bytes of the pydantic model, type and version in headers."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ValidationError

from schemas.events import SCHEMA_VERSION
from schemas.topics import TopicSpec

from .errors import PoisonMessageError

SUPPORTED_SCHEMA_VERSIONS = frozenset({SCHEMA_VERSION})
Headers = list[tuple[str, str | bytes | None]]


def encode(event: BaseModel) -> bytes:
    return event.model_dump_json().encode("utf-8")


def headers_for(event: BaseModel) -> Headers:
    kind = getattr(event, "type", type(event).__name__)
    return [
        ("content-type", b"application/json"),
        ("ragbus-type", str(kind).encode()),
        ("ragbus-schema-version", str(getattr(event, "schema_version", SCHEMA_VERSION)).encode()),
        ("ragbus-correlation-id", str(getattr(event, "correlation_id", "")).encode()),
    ]


def summarize(exc: ValidationError, limit: int = 3) -> str:
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    more = len(exc.errors()) - limit
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def decode(spec: TopicSpec, raw: bytes | None) -> Any:
    """Bytes to a validated event, or PoisonMessageError with a reason a human can act on."""
    if raw is None:
        raise PoisonMessageError("empty message value (tombstone) where an event was expected")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PoisonMessageError(f"value is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PoisonMessageError(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    if not isinstance(data, dict):
        raise PoisonMessageError(f"expected a JSON object, got {type(data).__name__}")
    version = data.get("schema_version", SCHEMA_VERSION)
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise PoisonMessageError(
            f"unsupported schema_version {version!r}; this reader handles {sorted(SUPPORTED_SCHEMA_VERSIONS)}"
        )
    try:
        return spec.adapter().validate_python(data)
    except ValidationError as exc:
        raise PoisonMessageError(f"invalid {spec.name} event: {summarize(exc)}") from exc
