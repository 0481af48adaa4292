"""embedded.v1 -> vector index + document store, status.v1 (at-least-once, idempotent effects).

Each ChunksEmbedded part is written with deterministic chunk ids, so a redelivery rewrites the same
rows. When every chunk of a version is stored, the version is finished: older versions' chunks are
deleted and the document becomes `indexed`. A delete at version v removes chunks <= v and leaves a
tombstone, so late parts of a deleted or superseded version are skipped and cannot resurrect.
Old chunks stay searchable until the new version is complete: an update never leaves a gap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infra.kafka.clients import EventProducer, SourceRecord
from infra.ops.metrics import Metrics
from kernel.errors import PoisonMessageError
from kernel.ports import ChunkRecord, DocumentRecord, DocumentStore, VectorIndex
from schemas.events import ChunksEmbedded, DocumentDeleted, DocumentStatus, Status, chunk_uuid
from schemas.topics import TOPICS, document_key

STAGE = "indexer"
#: Per-object write failures are retried this many times within one flush before dead-lettering.
OBJECT_RETRIES = 2


def chunk_records(ev: ChunksEmbedded, dim: int | None = None) -> list[ChunkRecord]:
    records = []
    for c in ev.chunks:
        vector = c.vector()
        if vector.shape != (ev.dim,) or (dim is not None and ev.dim != dim):
            raise PoisonMessageError(f"chunk {c.index} has a {vector.shape[0]}-dim vector; the index expects "
                                     f"{dim or ev.dim}")
        records.append(ChunkRecord(chunk_uuid(ev.tenant, ev.document_id, ev.version, c.index), ev.tenant,
                                   ev.document_id, ev.version, c.index, c.text, vector, ev.title,
                                   tuple(c.section_path), ev.source, dict(ev.metadata)))
    return records


def superseded(doc: DocumentRecord | None, version: int) -> bool:
    """True when the store already knows a newer version, or a delete at this version or later."""
    if doc is None:
        return False
    return doc.version > version or (doc.status is Status.DELETED and doc.version >= version)


def cleanup_bound(doc: DocumentRecord) -> int:
    """Chunks below this version must not exist given the document's current row."""
    return doc.version + 1 if doc.status is Status.DELETED else doc.version


@dataclass
class _Pending:
    record: SourceRecord
    event: ChunksEmbedded | DocumentDeleted
    chunks: list[ChunkRecord]


class IndexerSink:
    def __init__(self, index: VectorIndex, store: DocumentStore, producer: EventProducer, metrics: Metrics,
                 dim: int | None = None) -> None:
        self._index = index
        self._store = store
        self._producer = producer
        self._metrics = metrics
        self._dim = dim
        self._pending: list[_Pending] = []

    def add(self, event: Any, record: SourceRecord) -> None:
        try:
            chunks = chunk_records(event, self._dim) if isinstance(event, ChunksEmbedded) else []
        except PoisonMessageError as exc:
            self._status(event, Status.FAILED, error=str(exc))
            raise
        self._pending.append(_Pending(record, event, chunks))

    def discard(self) -> None:
        self._pending = []

    def flush(self) -> list[tuple[SourceRecord, Any, Exception]]:
        pending, failures = self._pending, []
        live = [p for p in pending if isinstance(p.event, DocumentDeleted)
                or not superseded(self._store.get_document(p.event.tenant, p.event.document_id), p.event.version)]
        failed = self._write([c for p in live for c in p.chunks], live)
        for p in live:
            if p.record in failed:
                failures.append((p.record, p.event, failed[p.record]))
                self._status(p.event, Status.FAILED, error=str(failed[p.record]))
            elif isinstance(p.event, DocumentDeleted):
                self._delete(p.event)
            else:
                self._maybe_finish(p.event)
        self._metrics.chunks.labels(STAGE).inc(sum(len(p.chunks) for p in live))
        self._pending = []
        self._index.maintain()  # cheap unless due: folds new rows into the index's own structures
        return failures

    def _write(self, chunks: list[ChunkRecord], live: list[_Pending]) -> dict[SourceRecord, Exception]:
        """Upsert into both stores; retry refused objects; map what still fails to its record."""
        owner = {c.chunk_id: p.record for p in live for c in p.chunks}
        todo_all = list({c.chunk_id: c for c in chunks}.values())  # a batch may repeat an event (redelivery)
        todo, failures = todo_all, []
        for _ in range(OBJECT_RETRIES + 1):
            failures = self._index.upsert(todo)
            if not failures:
                break
            refused = {f.chunk_id for f in failures}
            todo = [c for c in todo if c.chunk_id in refused]
        failed: dict[SourceRecord, Exception] = {
            owner[f.chunk_id]: PoisonMessageError(f"vector index refused chunk {f.chunk_id}: {f.message}")
            for f in failures}
        self._store.upsert_chunks([c for c in todo_all if owner[c.chunk_id] not in failed])
        return failed

    def _delete(self, ev: DocumentDeleted) -> None:
        version = ev.effective_version
        applied = self._store.apply_status(DocumentRecord(ev.tenant, ev.document_id, version, Status.DELETED))
        doc = self._store.get_document(ev.tenant, ev.document_id)
        bound = cleanup_bound(doc) if doc is not None else version + 1
        self._index.delete_versions(ev.tenant, ev.document_id, below=bound)
        self._store.delete_chunk_versions(ev.tenant, ev.document_id, below=bound)
        if applied:
            self._status(ev, Status.DELETED, version=version)

    def _maybe_finish(self, ev: ChunksEmbedded) -> None:
        stored = sum(1 for _, v in self._store.chunk_versions(ev.tenant, ev.document_id) if v == ev.version)
        if stored < ev.total_chunks:
            return
        applied = self._store.apply_status(DocumentRecord(
            ev.tenant, ev.document_id, ev.version, Status.INDEXED, ev.total_chunks, "", ev.content_hash, ev.title,
            ev.source, dict(ev.metadata)))
        doc = self._store.get_document(ev.tenant, ev.document_id)
        # A newer version or a delete may have landed meanwhile: clean up to whatever the row now says.
        bound = cleanup_bound(doc) if doc is not None else ev.version
        self._index.delete_versions(ev.tenant, ev.document_id, below=bound)
        self._store.delete_chunk_versions(ev.tenant, ev.document_id, below=bound)
        if applied or (doc is not None and doc.version == ev.version and doc.status is Status.INDEXED):
            self._status(ev, Status.INDEXED, chunks=ev.total_chunks)

    def _status(self, ev: ChunksEmbedded | DocumentDeleted, status: Status, *, chunks: int = 0, error: str = "",
                version: int | None = None) -> None:
        v = version if version is not None else getattr(ev, "version", None) or 0
        self._producer.send(TOPICS.status, document_key(ev.tenant, ev.document_id), DocumentStatus(
            tenant=ev.tenant, correlation_id=ev.correlation_id, document_id=ev.document_id, version=v,
            status=status, stage=STAGE, chunks=chunks, error=error[:2000]))
