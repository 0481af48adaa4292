"""Writes the contract's machine-readable descriptions (`make schemas`): JSON Schema for every event into
schemas/jsonschema/, the topic registry into schemas/jsonschema/topics.json, and the AsyncAPI 3.0
document into schemas/asyncapi.json, all from the same pydantic models and topic registry.

The files are committed; tests/unit/test_events.py::test_committed_json_schemas_are_current and
tests/unit/test_contract.py::test_committed_asyncapi_is_current fail when they are stale.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter

from . import asyncapi
from .events import (
    SCHEMA_VERSION,
    AnswerDelta,
    AnswerGenerated,
    ChunksEmbedded,
    ChunksProduced,
    ConversationDeleted,
    DeadLetter,
    DocumentAclChanged,
    DocumentArrived,
    DocumentDeleted,
    DocumentReindex,
    DocumentStatus,
    QueryRequested,
)
from .stages import PIPELINE

OUT = Path(__file__).parent / "jsonschema"
ASYNCAPI = Path(__file__).parent / "asyncapi.json"
EVENTS = (DocumentArrived, DocumentDeleted, DocumentAclChanged, DocumentReindex, ChunksProduced, ChunksEmbedded,
          DocumentStatus, QueryRequested, ConversationDeleted, AnswerDelta, AnswerGenerated, DeadLetter)
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def schema_id(model: type[BaseModel]) -> str:
    """The `$id` of a model's JSON Schema: a URN that names the contract version and the event."""
    return f"urn:ragbus:schema:v{SCHEMA_VERSION}:{model.__name__}"


def _event_schema(model: type[BaseModel]) -> dict[str, Any]:
    return {"$schema": JSON_SCHEMA_DIALECT, "$id": schema_id(model), **model.model_json_schema()}


def _dump(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def render() -> dict[str, str]:
    files: dict[str, Any] = {f"{m.__name__}.json": _event_schema(m) for m in EVENTS}
    files["topics.json"] = {
        spec.name: {"key": spec.key, "config": spec.config,
                    "partitions": spec.partitions or "RAGBUS_KAFKA_PARTITIONS (default 4)",
                    "description": spec.description,
                    "value": TypeAdapter(spec.value_type).json_schema() if spec.value_type is not None
                    else "original bytes of the dead-lettered message; reason in ragbus-dlq-* headers"}
        for spec in PIPELINE.topics()
    }
    return {name: _dump(schema) for name, schema in files.items()}


def render_asyncapi() -> str:
    """The AsyncAPI document as committed (key order kept: AsyncAPI readers show it in that order)."""
    return json.dumps(asyncapi.build(), indent=2) + "\n"


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for old in OUT.glob("*.json"):
        old.unlink()
    files = render()
    for name, text in files.items():
        (OUT / name).write_text(text)
    ASYNCAPI.write_text(render_asyncapi())
    print(f"wrote {len(files)} JSON Schemas to {OUT} and the AsyncAPI document to {ASYNCAPI}")


if __name__ == "__main__":
    main()
