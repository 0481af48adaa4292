"""Kafka record headers of the wire contract: what ragbus writes on every event, and on every dead letter.

Declared once here, used by the serde and the dead-letter writer (engine/) and described in the
AsyncAPI document (schemas/asyncapi.py). Headers are informative: ragbus reads the event's type and
version from the JSON value, never from headers, so a publisher may leave them out.
No I/O in this module.
"""

from __future__ import annotations

from typing import Final

CONTENT_TYPE: Final = "content-type"
TYPE: Final = "ragbus-type"
SCHEMA_VERSION: Final = "ragbus-schema-version"
CORRELATION_ID: Final = "ragbus-correlation-id"

#: Headers on every event ragbus writes (name -> description). Optional on events published to ragbus.
EVENT_HEADERS: Final[dict[str, str]] = {
    CONTENT_TYPE: "Always application/json.",
    TYPE: "The event's `type` (the same as in the value), so a reader can route without parsing.",
    SCHEMA_VERSION: "The event's `schema_version` (the same as in the value).",
    CORRELATION_ID: "The event's `correlation_id`: ties the events of one request or ingest together.",
}

DLQ_PREFIX: Final = "ragbus-dlq-"
#: Headers a dead letter carries besides the original record's own (name after the prefix -> description).
DLQ_FIELDS: Final[dict[str, str]] = {
    "stage": "The stage that could not process the record (chunker, embedder, indexer, status, answerer).",
    "topic": "The topic the record was read from: where `ragbus dlq replay` re-publishes it.",
    "partition": "Its partition there (decimal).",
    "offset": "Its offset there (decimal).",
    "error-type": "The kind of failure, e.g. PoisonMessageError (the event is invalid or unprocessable), "
                  "FetchError (its content_url could not be read), or the type of an unexpected exception.",
    "reason": "What was wrong and what to change, naming the field and what was expected, e.g. "
              "\"invalid documents.v1 event: missing field 'type': expected one of document.arrived, "
              "document.deleted\" (at most 4000 characters).",
    "occurred-at": "When it was dead-lettered (ISO 8601, UTC).",
    "attempts": "How many times the stage tried it (decimal).",
    "truncated": "Present only when the original value was too large even for the dead-letter topic: its "
                 "original size in bytes; the value is then its head.",
}
#: Set on a record `ragbus dlq replay` re-published: the dead letter's own topic[partition]@offset.
REPLAYED_FROM: Final = "ragbus-replayed-from"


def dlq(field: str) -> str:
    """The full header name of a dead-letter field, e.g. `dlq("reason")` -> `ragbus-dlq-reason`."""
    if field not in DLQ_FIELDS:
        raise KeyError(f"unknown dead-letter header field {field!r}")
    return DLQ_PREFIX + field
