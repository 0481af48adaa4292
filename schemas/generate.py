"""Writes JSON Schema for every event and topic into schemas/jsonschema/ (`make schemas`).

The files are committed; tests/unit/test_events.py::test_committed_json_schemas_are_current fails when they
are stale.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from .events import (
    AnswerDelta,
    AnswerGenerated,
    ChunksEmbedded,
    ChunksProduced,
    DeadLetter,
    DocumentArrived,
    DocumentDeleted,
    DocumentStatus,
    QueryRequested,
)
from .topics import TOPICS

OUT = Path(__file__).parent / "jsonschema"
EVENTS = (DocumentArrived, DocumentDeleted, ChunksProduced, ChunksEmbedded, DocumentStatus, QueryRequested,
          AnswerDelta, AnswerGenerated, DeadLetter)


def render() -> dict[str, str]:
    files: dict[str, Any] = {f"{m.__name__}.json": m.model_json_schema() for m in EVENTS}
    files["topics.json"] = {
        spec.name: {"key": spec.key, "config": spec.config,
                    "partitions": spec.partitions or "RAGBUS_KAFKA_PARTITIONS (default 4)",
                    "description": spec.description,
                    "value": TypeAdapter(spec.value_type).json_schema() if spec.value_type is not None
                    else "original bytes of the dead-lettered message; reason in ragbus-dlq-* headers"}
        for spec in TOPICS.all()
    }
    return {name: json.dumps(schema, indent=2, sort_keys=True) + "\n" for name, schema in files.items()}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for old in OUT.glob("*.json"):
        old.unlink()
    for name, text in render().items():
        (OUT / name).write_text(text)
    print(f"wrote {len(render())} schemas to {OUT}")


if __name__ == "__main__":
    main()
