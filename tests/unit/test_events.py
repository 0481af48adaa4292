from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from engine.serde import decode, encode
from kernel.errors import PoisonMessageError
from schemas import generate
from schemas.events import (
    INLINE_TEXT_MAX_BYTES,
    ContentRef,
    ConversationDeleted,
    DocumentArrived,
    QueryRequested,
    chunk_uuid,
    section_uuid,
)
from schemas.stages import PIPELINE
from schemas.topics import TOPICS, TopicSpec
from tests import hostile
from tests.hostile import GOOD


def test_document_needs_exactly_one_content() -> None:
    with pytest.raises(ValidationError, match="exactly one of text"):
        DocumentArrived(document_id="a")
    with pytest.raises(ValidationError, match="exactly one of text"):
        DocumentArrived(document_id="a", text="x", content_ref=ContentRef(sha256="0" * 64, size=1))


def test_inline_text_is_bounded_and_says_what_to_do() -> None:
    with pytest.raises(ValidationError, match="send content_url"):
        DocumentArrived(document_id="a", text="x" * (INLINE_TEXT_MAX_BYTES + 1))


def test_pdf_must_travel_by_reference() -> None:
    with pytest.raises(ValidationError, match="send content_url"):
        DocumentArrived(document_id="a", text="%PDF", content_type="application/pdf")


@pytest.mark.parametrize("tenant", ["UPPER", "-lead", "a" * 64, "sp ace", ""])
def test_tenant_names_are_restricted(tenant: str) -> None:
    with pytest.raises(ValidationError):
        DocumentArrived(document_id="a", text="x", tenant=tenant)


def test_events_are_frozen_and_tolerant_of_unknown_fields() -> None:
    ev = DocumentArrived(document_id="a", text="x")
    with pytest.raises(ValidationError):
        ev.text = "y"  # type: ignore[misc]
    data = json.loads(encode(ev)) | {"added_by_a_newer_producer": 1}
    again = decode(TOPICS.documents, json.dumps(data).encode())
    assert again == ev


def test_effective_version_defaults_to_event_time() -> None:
    ev = DocumentArrived(document_id="a", text="x")
    assert ev.effective_version == int(ev.occurred_at.timestamp() * 1_000_000)
    assert DocumentArrived(document_id="a", text="x", version=7).effective_version == 7


@pytest.mark.parametrize(("raw", "reason"), [
    (b"{not json", "invalid JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b'{"type": "document.arrived", "schema_version": 99, "document_id": "a", "text": "x"}',
     "unsupported schema_version 99"),
    (b'{"type": "document.arrived", "document_id": "a"}', "exactly one of text"),
    (b'{"type": "surprise", "document_id": "a"}', "invalid documents.v1 event: field 'type' is \"surprise\""),
    (b"\xff\xfe\x00binary", "not UTF-8"),
    (None, "tombstone"),
])
def test_decode_errors_carry_a_reason(raw: bytes | None, reason: str) -> None:
    with pytest.raises(PoisonMessageError, match=reason):
        decode(TOPICS.documents, raw)


@pytest.mark.parametrize(("raw", "reason"), [
    (b"[" * 10_000, "nests 10000 levels deep, over the limit of 32 (RAGBUS_DECODE_MAX_DEPTH)"),
    (b'{"a":' * 40 + b"1" + b"}" * 40, "nests 40 levels deep"),
    (b'{"a": ' + b"9" * 5000 + b"}", "invalid JSON: ValueError"),
    (b'{"padding": "' + b"y" * (3 * 1024 * 1024) + b'"}', "over the limit of 2097152 (RAGBUS_DECODE_MAX_BYTES)"),
])
def test_decode_bounds_size_and_depth_before_parsing(raw: bytes, reason: str) -> None:
    with pytest.raises(PoisonMessageError, match=re.escape(reason)):
        decode(TOPICS.documents, raw)


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    text = "[" * 100 + ' "quoted \" [[[ " ' + "{" * 100
    ev = decode(TOPICS.documents, encode(DocumentArrived(document_id="a", text=text)))
    assert ev.text == text


@pytest.mark.parametrize("spec", [TOPICS.documents, TOPICS.chunks, TOPICS.embedded, TOPICS.queries],
                         ids=lambda s: s.name)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_decode_is_total(spec: TopicSpec, data: st.DataObject) -> None:
    """Whatever the bytes, decoding returns an event or raises PoisonMessageError with a reason, nothing else."""
    raw = data.draw(st.one_of(st.binary(max_size=3000), hostile.values(spec, GOOD[spec.name])))
    try:
        decode(spec, raw)
    except PoisonMessageError as exc:
        assert str(exc).strip()


def test_query_bounds() -> None:
    with pytest.raises(ValidationError):
        QueryRequested(text="   ")
    with pytest.raises(ValidationError):
        QueryRequested(text="q", top_k=500)
    with pytest.raises(ValidationError):
        QueryRequested(text="q", query_id="tab\there")
    with pytest.raises(ValidationError):
        QueryRequested(text="q", query_id="")
    with pytest.raises(ValidationError):
        QueryRequested(text="q", query_id="x" * 257)


@pytest.mark.parametrize("query_id", ["faq/general#3", "q-faq/library#how-do-i-parcel-out-work", "has space",
                                      "ünïcode?", "a" * 256])
def test_client_query_ids_of_any_printable_form_travel_unchanged(query_id: str) -> None:
    q = QueryRequested(text="q", query_id=query_id)
    assert decode(TOPICS.queries, encode(q)).query_id == query_id


def test_committed_json_schemas_are_current() -> None:
    expected = generate.render()
    on_disk = {p.name: p.read_text() for p in generate.OUT.glob("*.json")}
    assert on_disk == expected, "JSON Schema is stale: run `make schemas` and commit schemas/jsonschema"


def test_every_topic_name_is_declared_once() -> None:
    names = [spec.name for spec in PIPELINE.topics()]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(("make", "args", "golden"), [
    (chunk_uuid, ("default", "handbook/a.md", 1, 0), "a7162319-3c12-520d-8e0a-1595f2a1a3a1"),
    (chunk_uuid, ("acme", "docs/é.md", 1735689600000000, 17), "81840bb8-11d7-56f9-80b9-bb22effc0868"),
    (section_uuid, ("default", "handbook/a.md", 1, 0), "bc0d21f4-01f3-585b-825f-a035439d99d8"),
    (section_uuid, ("acme", "docs/é.md", 1735689600000000, 3), "43db6fc7-a701-53e6-badc-e7ef371db4c1"),
])
def test_chunk_and_section_ids_never_change(make, args, golden) -> None:  # type: ignore[no-untyped-def]
    """Every stored chunk and section entry is keyed by these ids, and a redelivery or a re-index overwrites in place
    only because they are the same as when the entry was first written: a change of formula would orphan every
    stored entry (old ids never overwritten or deleted). Golden values, written down once; never update them."""
    assert make(*args) == golden


def test_an_over_long_or_unprintable_conversation_id_is_refused_clearly() -> None:
    for bad in ("x" * 257, "line\nbreak", ""):
        with pytest.raises(ValidationError, match="conversation_id"):
            QueryRequested(text="q", conversation_id=bad)
    with pytest.raises(PoisonMessageError, match="conversation_id"):
        decode(TOPICS.queries, b'{"text": "q", "conversation_id": "' + b"x" * 300 + b'"}')
    # queries.v1 publishers before conversations send no `type`: still queries
    assert isinstance(decode(TOPICS.queries, b'{"text": "q"}'), QueryRequested)
    assert isinstance(decode(TOPICS.queries, b'{"type": "conversation.deleted", "conversation_id": "c"}'),
                      ConversationDeleted)
