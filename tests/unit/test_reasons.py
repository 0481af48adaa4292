"""Every class of invalid event gets a dead-letter reason that names the field and what was expected.

These are the exact reasons a publisher reads in `ragbus-dlq-reason` (and in the `failed` status of a
document): each case is one class of mistake, with the full text it produces.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from engine.serde import decode
from kernel.errors import PoisonMessageError
from schemas.events import INLINE_TEXT_MAX_BYTES
from schemas.topics import TOPICS, TopicSpec

DOC = "invalid documents.v1 event: "
QUERY = "invalid queries.v1 event: "


def doc(**fields: Any) -> bytes:
    base: dict[str, Any] = {"type": "document.arrived", "tenant": "acme", "document_id": "a", "text": "t"}
    return json.dumps({k: v for k, v in (base | fields).items() if v is not ...}).encode()


def query(**fields: Any) -> bytes:
    base: dict[str, Any] = {"type": "query.requested", "query_id": "q1", "text": "What?"}
    return json.dumps({k: v for k, v in (base | fields).items() if v is not ...}).encode()


CASES: list[tuple[str, TopicSpec, bytes | None, str]] = [
    # the bytes
    ("tombstone", TOPICS.documents, None, "empty message value (tombstone) where an event was expected"),
    ("not utf-8", TOPICS.documents, b"\xff\xfe{}", "value is not UTF-8 text: invalid start byte at byte 0"),
    ("not json", TOPICS.documents, b'{"type": ',
     "invalid JSON: Expecting value at line 1 column 10; expected one JSON object per message"),
    ("not an object", TOPICS.documents, b'[{"type": "document.arrived"}]',
     "expected a JSON object (one event per message), got an array"),
    ("schema version", TOPICS.documents, doc(schema_version=2),
     "unsupported schema_version 2: expected field 'schema_version' to be one of 1, the versions this reader handles"),
    # the event type
    ("missing type", TOPICS.documents, doc(type=...),
     DOC + "missing field 'type': expected one of document.arrived, document.deleted, document.acl_changed, "
     "document.reindex"),
    ("unknown type", TOPICS.documents, doc(type="document.created"),
     DOC + "field 'type' is \"document.created\": expected one of document.arrived, document.deleted, "
     "document.acl_changed, document.reindex"),
    ("type of another topic", TOPICS.documents, doc(type="query.requested"),
     DOC + "field 'type' is \"query.requested\": expected one of document.arrived, document.deleted, "
     "document.acl_changed, document.reindex"),
    # fields
    ("missing field", TOPICS.documents, doc(document_id=...),
     DOC + "missing field 'document_id': expected a string of 1 to 512 characters"),
    ("null field", TOPICS.documents, doc(title=None), DOC + "field 'title': expected a string, got null"),
    ("wrong type", TOPICS.documents, doc(version="seven"), DOC + "field 'version': expected an integer, got \"seven\""),
    ("negative version", TOPICS.documents, doc(version=-1), DOC + "field 'version': expected a number >= 0, got -1"),
    ("too long", TOPICS.documents, doc(title="x" * 5000),
     DOC + "field 'title': expected at most 1024 characters, got 5000 characters"),
    ("tenant pattern", TOPICS.documents, doc(tenant="Acme Corp"),
     DOC + "field 'tenant': expected 1 to 63 lowercase letters, digits, '_' or '-', starting with a letter or "
     "digit, got \"Acme Corp\""),
    ("unknown content type", TOPICS.documents, doc(content_type="application/msword"),
     DOC + "field 'content_type': expected one of 'text/plain', 'text/markdown', 'text/html' or "
     "'application/pdf', got \"application/msword\""),
    ("event id", TOPICS.documents, doc(event_id="42"),
     DOC + "field 'event_id': expected a UUID such as 0b6f3c1e-9d2a-4c55-8e1f-3a7d2b9c4e10, got \"42\""),
    ("time without zone", TOPICS.documents, doc(occurred_at="2026-01-15T09:30:00"),
     DOC + "field 'occurred_at': expected a date-time with a timezone, such as 2026-01-15T09:30:00Z or an offset"),
    ("not a time", TOPICS.documents, doc(occurred_at="yesterday"),
     DOC + "field 'occurred_at': expected an ISO 8601 date-time with a timezone such as 2026-01-15T09:30:00Z, "
     "got \"yesterday\""),
    ("metadata key", TOPICS.documents, doc(metadata={"my key": 1}),
     DOC + "key \"my key\" of field 'metadata': expected 1 to 64 letters, digits, '_', '.' or '-', got \"my key\""),
    ("metadata value", TOPICS.documents, doc(metadata={"tags": ["a", "b"]}),
     DOC + "field 'metadata.tags': expected a string, an integer, a number or true or false, got an "
     "array of 2"),
    ("metadata size", TOPICS.documents, doc(metadata={f"k{i}": i for i in range(40)}),
     DOC + "field 'metadata': expected at most 32 entries, got 40"),
    ("metadata shape", TOPICS.documents, doc(metadata=["a"]),
     DOC + "field 'metadata': expected a JSON object, got an array of 1"),
    # content
    ("no content", TOPICS.documents, doc(text=...),
     DOC + "exactly one of text (inline), content_url (by reference) or content_ref (claim-check) must be set, got "
     "none"),
    ("two contents", TOPICS.documents, doc(content_url="https://files.example.com/a.md"),
     DOC + "exactly one of text (inline), content_url (by reference) or content_ref (claim-check) must be set, got "
     "text and content_url"),
    ("inline pdf", TOPICS.documents, doc(content_type="application/pdf"),
     DOC + "application/pdf content cannot travel as inline text: send content_url"),
    ("inline too large", TOPICS.documents, doc(text="y" * (INLINE_TEXT_MAX_BYTES + 1)),
     DOC + f"inline text is {INLINE_TEXT_MAX_BYTES + 1} bytes, over the {INLINE_TEXT_MAX_BYTES}-byte limit: publish "
     "the content where ragbus can read it and send content_url"),
    ("url scheme", TOPICS.documents, doc(text=..., content_url="http://files.example.com/a.md"),
     DOC + "field 'content_url': expected an https://, s3:// or file:// URL, got scheme 'http'"),
    ("url credentials", TOPICS.documents, doc(text=..., content_url="https://me:secret@files.example.com/a.md"),
     DOC + "field 'content_url': must not carry credentials (user:password@): ragbus reads sources with its own "
     "configured credentials"),
    ("s3 without key", TOPICS.documents, doc(text=..., content_url="s3://bucket"),
     DOC + "field 'content_url': an s3:// URL needs an object key: s3://BUCKET/KEY"),
    ("relative file", TOPICS.documents, doc(text=..., content_url="file://docs/a.md"),
     DOC + "field 'content_url': a file:// URL names an absolute local path: file:///path/to/file"),
    ("url with spaces", TOPICS.documents, doc(text=..., content_url="https://x.example.com/my file.md"),
     DOC + "field 'content_url': must not contain spaces or control characters (percent-encode them)"),
    ("sha without url", TOPICS.documents, doc(content_sha256="0" * 64),
     DOC + "content_sha256 pins the bytes behind content_url: set it only with content_url"),
    ("bad sha", TOPICS.documents, doc(text=..., content_url="https://x.example.com/a", content_sha256="abc"),
     DOC + "field 'content_sha256': expected a sha256 as 64 lowercase hex digits, got \"abc\""),
    ("claim-check shape", TOPICS.documents, doc(text=..., content_ref={"sha256": "0" * 64}),
     DOC + "missing field 'content_ref.size': expected an integer >= 0"),
    ("delete without id", TOPICS.documents, doc(type="document.deleted", text=..., document_id=...),
     DOC + "missing field 'document_id': expected a string of 1 to 512 characters"),
    # queries
    ("blank question", TOPICS.queries, query(text="   "), QUERY + "field 'text': question must not be blank"),
    ("missing question", TOPICS.queries, query(text=...), QUERY + "missing field 'text': expected a string of 1 to "
     "4000 characters"),
    ("top_k", TOPICS.queries, query(top_k=500), QUERY + "field 'top_k': expected a number <= 100, got 500"),
    ("query id control", TOPICS.queries, query(query_id="a\nb"),
     QUERY + "field 'query_id': expected printable text without control characters, got \"a\\nb\""),
    ("query id type", TOPICS.queries, query(query_id=7), QUERY + "field 'query_id': expected a string, got 7"),
    ("flag", TOPICS.queries, query(stream="yes please"),
     QUERY + "field 'stream': expected true or false, got \"yes please\""),
    ("query type", TOPICS.queries, query(type="document.arrived"),
     QUERY + "field 'type' is \"document.arrived\": expected one of query.requested, conversation.deleted"),
]


@pytest.mark.parametrize(("spec", "raw", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_class_of_invalid_event_has_a_reason_that_names_the_field(spec: TopicSpec, raw: bytes | None,
                                                                       reason: str) -> None:
    with pytest.raises(PoisonMessageError) as caught:
        decode(spec, raw)
    assert str(caught.value) == reason


def test_several_mistakes_are_all_named_up_to_three() -> None:
    with pytest.raises(PoisonMessageError) as caught:
        decode(TOPICS.documents, doc(tenant="X", title=1, version="v", source=2))
    assert str(caught.value).count("field '") == 3 and str(caught.value).endswith("(+1 more)")


def test_a_reason_never_repeats_a_large_value() -> None:
    with pytest.raises(PoisonMessageError) as caught:
        decode(TOPICS.documents, doc(tenant="x" * 100_000))
    assert len(str(caught.value)) < 400
