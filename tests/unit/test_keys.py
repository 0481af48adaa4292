"""Keys: a document event that arrives keyless or wrongly keyed is handled, re-keyed `tenant/document_id`
by the chunker before any stage that needs per-document order, and counted so its publisher can fix it
(docs/publishing.md, "Keys")."""

from __future__ import annotations

import json
from typing import Any

from chunking.splitter import Chunker
from engine.delivery import BatchPolicy
from engine.records import SourceRecord
from infra.models.embedder import load_tokenizer
from infra.ops.metrics import Metrics
from streams import chunker


def record(offset: int, key: bytes | None, **fields: Any) -> SourceRecord:
    value = {"type": "document.arrived", "tenant": "acme", "document_id": "handbook/a.md", "text": "Owls hoot."}
    return SourceRecord("ragbus.documents.v1", 0, offset, key, json.dumps(value | fields).encode(), [])


def test_keyless_and_wrongly_keyed_document_events_are_rekeyed_and_counted(settings_factory) -> None:  # type: ignore[no-untyped-def]
    metrics = Metrics()
    split = Chunker(load_tokenizer("all-MiniLM-L6-v2"), 64, 8)
    policy = BatchPolicy(settings_factory(), chunker.stage(split, lambda ref: b""), metrics)
    records = [
        record(0, None),  # keyless
        record(1, b"handbook/a.md"),  # the id without the tenant
        record(2, b"default/handbook/a.md", type="document.deleted"),  # another tenant's key: the value wins
        record(3, b"acme/handbook/a.md"),  # right
    ]
    done = policy.process(records, lambda s: True)
    assert done is not None and done.dead_lettered == 0
    assert {s.key for s in done.sends} == {b"acme/handbook/a.md"}
    assert {s.topic.split(".", 1)[1] for s in done.sends} == {"chunks.v1", "status.v1"}
    assert metrics.registry.get_sample_value("ragbus_events_rekeyed_total", {"stage": "chunker"}) == 3
