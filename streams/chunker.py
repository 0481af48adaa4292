"""documents.v1 -> chunks.v1 + status.v1 (at-least-once; outputs are deterministic per input).

Chunks a document version into ordered parts of at most CHUNKS_PER_PART chunks. Deletes pass through
unchanged so they stay ordered with the document's other events on its key.
"""

from __future__ import annotations

from collections.abc import Callable

from chunking.splitter import Chunker
from kernel.errors import PoisonMessageError
from kernel.stage import Out, Stage, failed_status, per_event
from schemas.events import (
    CHUNKS_PER_PART,
    DOCUMENT_MAX_BYTES,
    ChunksProduced,
    ContentRef,
    ContentType,
    DocumentArrived,
    DocumentDeleted,
    DocumentStatus,
    Status,
    content_hash,
)
from schemas.topics import TOPICS, document_key

ContentLoader = Callable[[ContentRef], bytes]
STAGE = "chunker"


def _content(event: DocumentArrived, load: ContentLoader) -> str | bytes:
    if event.text is not None:
        return event.text
    assert event.content_ref is not None  # guaranteed by the model validator
    if event.content_ref.size > DOCUMENT_MAX_BYTES:
        raise PoisonMessageError(f"document is {event.content_ref.size} bytes, over the {DOCUMENT_MAX_BYTES} limit")
    try:
        data = load(event.content_ref)
    except KeyError as exc:
        raise PoisonMessageError(f"claim-check content {event.content_ref.sha256} is not in the store") from exc
    if content_hash(data) != event.content_ref.sha256:
        raise PoisonMessageError("claim-check content does not match its sha256")
    return data if event.content_type is ContentType.PDF else data.decode("utf-8", errors="strict")


def chunk_event(event: DocumentArrived | DocumentDeleted, chunker: Chunker, load: ContentLoader) -> list[Out]:
    key = document_key(event.tenant, event.document_id)
    if isinstance(event, DocumentDeleted):
        return [Out(TOPICS.chunks, key, event)]
    try:
        content = _content(event, load)
    except UnicodeDecodeError as exc:
        raise PoisonMessageError(f"claim-check content is not UTF-8 text: {exc.reason}") from exc
    chunks = chunker.chunk(event.content_type, content)
    version = event.effective_version
    digest = content_hash(content.encode("utf-8") if isinstance(content, str) else content)
    parts = [chunks[i:i + CHUNKS_PER_PART] for i in range(0, len(chunks), CHUNKS_PER_PART)]
    envelope = {"tenant": event.tenant, "correlation_id": event.correlation_id or str(event.event_id)}
    outs = [
        Out(TOPICS.chunks, key, ChunksProduced(
            **envelope, document_id=event.document_id, version=version, content_hash=digest, title=event.title,
            source=event.source, metadata=event.metadata, part=n, parts=len(parts), total_chunks=len(chunks),
            document_occurred_at=event.occurred_at, chunks=part))
        for n, part in enumerate(parts)
    ]
    outs.append(Out(TOPICS.status, key, DocumentStatus(
        **envelope, document_id=event.document_id, version=version, status=Status.CHUNKED, stage=STAGE,
        chunks=len(chunks))))
    return outs


def stage(chunker: Chunker, load: ContentLoader) -> Stage:
    return Stage(
        name=STAGE, source=TOPICS.documents,
        handle=per_event(lambda ev: chunk_event(ev, chunker, load)),
        on_failure=lambda ev, exc: failed_status(ev, exc, STAGE),
        max_batch=16, window_s=0.01,
    )
