"""Example events for the AsyncAPI document: what a publisher sends, and what ragbus publishes.

Inputs are written as a publisher would write them (only the fields that matter); outputs are built
from the models, so every example is valid by construction and tests/unit/test_contract.py checks
each against its schema again. No I/O in this module.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from .events import (
    AnswerDelta,
    AnswerGenerated,
    Chunk,
    ChunksEmbedded,
    ChunksProduced,
    Citation,
    DocumentStatus,
    EmbeddedChunk,
    Status,
    Timings,
    chunk_uuid,
    content_hash,
)

_AT = datetime(2026, 1, 15, 9, 30, tzinfo=UTC)
_ENVELOPE: dict[str, Any] = {"event_id": uuid.UUID("0b6f3c1e-9d2a-4c55-8e1f-3a7d2b9c4e10"), "occurred_at": _AT,
                             "tenant": "acme", "correlation_id": "handbook-sync-42"}
_TEXT = "# Onboarding\n\nNew starters get a laptop on their first day.\n\n## Holidays\n\n25 days a year."
_HASH = content_hash(_TEXT.encode())


def _dump(event: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(event.model_dump_json())
    return data


#: (name, summary, payload) per message name (the event's `type`).
EXAMPLES: dict[str, list[tuple[str, str, dict[str, Any]]]] = {
    "document.arrived": [
        ("inline", "A Markdown document sent inline (up to 512 KiB)", {
            "type": "document.arrived", "tenant": "acme", "document_id": "handbook/onboarding.md", "version": 7,
            "title": "Onboarding", "content_type": "text/markdown", "text": _TEXT,
            "metadata": {"team": "people", "lang": "en"}}),
        ("by-url", "A PDF of any size by reference, pinned to its sha256", {
            "type": "document.arrived", "tenant": "acme", "document_id": "reports/2025-annual.pdf",
            "version": 1, "title": "Annual report 2025", "content_type": "application/pdf",
            "content_url": "https://files.example.com/reports/2025-annual.pdf",
            "content_sha256": "9f2c1a7be0d4d5c3f1e2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8"}),
        ("from-s3", "An HTML page stored in S3", {
            "type": "document.arrived", "tenant": "acme", "document_id": "wiki/vpn", "version": 1700000000,
            "content_type": "text/html", "content_url": "s3://acme-wiki-export/pages/vpn.html"}),
    ],
    "document.deleted": [
        ("delete", "Delete every version of a document up to version 7", {
            "type": "document.deleted", "tenant": "acme", "document_id": "handbook/onboarding.md", "version": 7}),
    ],
    "query.requested": [
        ("question", "A question, answered with streamed deltas", {
            "type": "query.requested", "tenant": "acme", "query_id": "support/ticket-881#1",
            "text": "How many holiday days do new starters get?", "top_k": 5, "stream": True}),
        ("retrieve-only", "Ranked chunks only, no generated answer", {
            "type": "query.requested", "tenant": "acme", "query_id": "search-17", "text": "laptop",
            "retrieve_only": True, "filters": {"team": "people"}}),
    ],
    "answer.delta": [
        ("delta", "The first streamed piece of an answer", _dump(AnswerDelta(
            **_ENVELOPE, query_id="support/ticket-881#1", seq=0, text="New starters get 25 days"))),
    ],
    "answer.generated": [
        ("answer", "The final answer with its citations", _dump(AnswerGenerated(
            **_ENVELOPE, query_id="support/ticket-881#1", question="How many holiday days do new starters get?",
            answer="25 days a year [1].", degraded=False, model="claude-sonnet-4-6", prompt_version="v3",
            timings=Timings(retrieve_ms=38.5, generate_ms=912.0, total_ms=955.1),
            citations=[Citation(rank=1, document_id="handbook/onboarding.md",
                                chunk_id=chunk_uuid("acme", "handbook/onboarding.md", 7, 1), score=0.83,
                                text="25 days a year.", title="Onboarding", section_path=["Onboarding", "Holidays"])],
        ))),
    ],
    "document.status": [
        ("indexed", "A version is searchable", _dump(DocumentStatus(
            **_ENVELOPE, document_id="handbook/onboarding.md", version=7, status=Status.INDEXED, stage="indexer",
            chunks=2))),
        ("failed", "A version could not be indexed, and why", _dump(DocumentStatus(
            **_ENVELOPE, document_id="reports/2025-annual.pdf", version=1, status=Status.FAILED, stage="chunker",
            error="FetchError: content_url https://files.example.com/reports/2025-annual.pdf answered 404 Not "
                  "Found: publish the content there, then replay the dead letter"))),
    ],
    "chunks.produced": [
        ("chunks", "A document version cut into chunks (internal)", _dump(ChunksProduced(
            **_ENVELOPE, document_id="handbook/onboarding.md", version=7, content_hash=_HASH, title="Onboarding",
            part=0, parts=1, total_chunks=1,
            chunks=[Chunk(index=0, text="25 days a year.", section_path=["Onboarding", "Holidays"])]))),
    ],
    "chunks.embedded": [
        ("embedded", "Chunks with their vectors (internal)", _dump(ChunksEmbedded(
            **_ENVELOPE, document_id="handbook/onboarding.md", version=7, content_hash=_HASH, title="Onboarding",
            part=0, parts=1, total_chunks=1, model="all-MiniLM-L6-v2", dim=4,
            chunks=[EmbeddedChunk(index=0, text="25 days a year.", section_path=["Onboarding", "Holidays"],
                                  vector_b64=EmbeddedChunk.encode_vector([0.5, -0.5, 0.5, -0.5]))]))),
    ],
}
