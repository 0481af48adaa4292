"""embedded.v1 -> vector index + document store, status.v1 (at-least-once, idempotent effects).

Each ChunksEmbedded part is written with deterministic chunk ids, so a redelivery rewrites the same
rows. When every chunk of a version is stored, the version is finished: older versions' chunks are
deleted and the document becomes `indexed`. A delete at version v removes chunks <= v and leaves a
tombstone, so late parts of a deleted or superseded version are skipped and cannot resurrect.
Old chunks stay searchable until the new version is complete: an update never leaves a gap.

Permissions: every index entry holds its document's visibility tokens (kernel/permissions.py). The ACL in
force is kept in the document store, ordered by (acl_version, kind, content version) independently of the
content: a document's own `acl` (carried on its parts) and `document.acl_changed` events are applied there
first, then entries are written with the ACL in force, and when it changed, every entry of the document
(all versions) is re-stamped in place. An ACL change for a document not indexed yet is kept and stamps its
entries when they arrive; a stale one (lower order than the ACL in force) is reported `failed`, not applied.
A deleted document's ACL is kept: a document published again under its id is readable as it says until the
next change.

Index generations (kernel/generations.py): a part is written into its generation's index (a part for a
generation no longer live is dropped); deletes and ACL changes reach every live generation. When a generation
has every chunk of a version it is marked in the store; the version is reported `indexed` (status row and event,
freshness) once the serving generation has it, so a publisher's `indexed` always means searchable.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from infra.ops import logs
from infra.ops.metrics import Freshness, Metrics
from kernel.errors import PoisonMessageError
from kernel.generations import Generation, Lanes, State
from kernel.permissions import ARRIVED, CHANGED, Acl, AclOrder, document_tokens
from kernel.ports import ChunkRecord, DocumentRecord, DocumentStore, Level, VectorIndex, WriteFailure
from kernel.stage import Out, PerEvent, Stage, failed_status
from kernel.versions import cleanup_bound, superseded
from schemas.events import (
    ChunksEmbedded,
    DocumentAclChanged,
    DocumentDeleted,
    DocumentReindex,
    DocumentStatus,
    Status,
    chunk_uuid,
    section_uuid,
    utcnow,
)
from schemas.stages import INDEXER
from schemas.topics import TOPICS, document_key

log = logs.get(__name__)
T = TypeVar("T")
#: Per-object write failures are retried this many times within one batch before dead-lettering.
OBJECT_RETRIES = 2
Event = ChunksEmbedded | DocumentDeleted | DocumentAclChanged
DocKey = tuple[str, str]


def statement(ev: Event) -> Acl | None:
    """What an event says about who may read its document (None: nothing)."""
    if isinstance(ev, DocumentAclChanged):
        return Acl(None if ev.acl is None else tuple(ev.acl), AclOrder(ev.acl_version, CHANGED))
    if isinstance(ev, ChunksEmbedded) and ev.acl is not None:
        return Acl(tuple(ev.acl), AclOrder(ev.acl_version, ARRIVED, ev.version))
    return None


@dataclass(frozen=True)
class Lane:
    """A generation's index and the vector size it holds."""

    index: VectorIndex
    dim: int | None = None


def chunk_records(ev: ChunksEmbedded, dim: int | None = None, acl: tuple[str, ...] | None = None
                  ) -> list[ChunkRecord]:
    """The part's chunks, then its section entries (the index holds both; the document store, chunks)."""
    records = []
    for kind, items in (("chunk", ev.chunks), ("section", ev.sections)):
        for c in items:
            vector = c.vector()
            if vector.shape != (ev.dim,) or (dim is not None and ev.dim != dim):
                raise PoisonMessageError(f"{kind} {getattr(c, 'index', c.section)} has a {vector.shape[0]}-dim vector; "
                                         f"the index expects {dim or ev.dim}")
    tokens = acl if acl is not None else document_tokens(ev.tenant, None)
    for c in ev.chunks:
        records.append(ChunkRecord(chunk_uuid(ev.tenant, ev.document_id, ev.version, c.index, ev.generation),
                                   ev.tenant, ev.document_id, ev.version, c.index, c.text, c.vector(), ev.title,
                                   tuple(c.section_path), ev.source, dict(ev.metadata), c.section, acl=tokens))
    for s in ev.sections:
        records.append(ChunkRecord(section_uuid(ev.tenant, ev.document_id, ev.version, s.section, ev.generation),
                                   ev.tenant, ev.document_id, ev.version, s.section, s.text, s.vector(), ev.title,
                                   tuple(s.section_path), ev.source, dict(ev.metadata), s.section, Level.SECTION,
                                   acl=tokens))
    return records


def status(ev: Event, value: Status, *, version: int, chunks: int = 0) -> Out:
    return Out(TOPICS.status, document_key(ev.tenant, ev.document_id), DocumentStatus(
        tenant=ev.tenant, correlation_id=ev.correlation_id, document_id=ev.document_id, version=version,
        status=value, stage=INDEXER.name, chunks=chunks))


class Indexer:
    def __init__(self, lanes: Lanes[Lane] | VectorIndex, store: DocumentStore, metrics: Metrics,
                 dim: int | None = None) -> None:
        """`lanes`: every live generation's index; one index: the first generation only (of `dim`-long vectors)."""
        self._lanes = lanes if isinstance(lanes, Lanes) else Lanes.fixed(Lane(lanes, dim))
        self._store = store
        self._metrics = metrics

    def stage(self, max_batch: int, window_s: float) -> Stage[Event]:
        return Stage(INDEXER, handle=self.handle, on_failure=lambda ev, exc: failed_status(ev, exc, INDEXER.name),
                     max_batch=max_batch, window_s=window_s)

    def handle(self, events: Sequence[Event]) -> list[PerEvent]:
        lanes = self._lanes.each()
        serving = lanes[0][0]
        building = [g.name for g, _ in lanes if g.state is State.BUILDING]
        by_name = {g.name: lane for g, lane in lanes}
        results: list[PerEvent] = [[] for _ in events]
        acls = self._apply_acls(events, lanes)
        chunks: dict[int, list[ChunkRecord]] = {}
        for i, ev in enumerate(events):
            if not isinstance(ev, ChunksEmbedded) or ev.generation not in by_name:
                continue  # a part of a generation no longer live is dropped
            try:
                records = chunk_records(ev, by_name[ev.generation].dim, acls.tokens(ev.tenant, ev.document_id))
            except PoisonMessageError as exc:
                results[i] = exc
                continue
            if not superseded(self._store.get_document(ev.tenant, ev.document_id), ev.version):
                chunks[i] = records
        failed = self._write(chunks, events, by_name)
        for i, ev in enumerate(events):
            if i in failed:
                results[i] = failed[i]
            elif isinstance(ev, DocumentDeleted):
                results[i] = self._delete(ev, lanes)
            elif isinstance(ev, DocumentAclChanged):
                in_force = acls.in_force[(ev.tenant, ev.document_id)]
                assert in_force is not None  # applied above
                results[i] = self._acl_status(ev, in_force)
            elif i in chunks and isinstance(ev, ChunksEmbedded):
                results[i] = self._maybe_finish(ev, by_name[ev.generation], serving, building)
        self._metrics.chunks.labels(INDEXER.name).inc(sum(len(c) for c in chunks.values()))
        # no index maintenance here: it runs in the indexer process's own thread, off the commit path
        return results

    def _apply_acls(self, events: Sequence[Event], lanes: Sequence[tuple[Generation, Lane]]) -> _Acls:
        """Every ACL statement of the batch applied to the store, in order, before anything is written; then the
        entries of each document whose ACL changed re-stamped in place in every live generation (entries written
        below carry it already)."""
        acls = _Acls(self._store)
        changed: set[DocKey] = set()
        for ev in events:
            said = statement(ev)
            if said is None:
                continue
            key = (ev.tenant, ev.document_id)
            before = acls.current(key)
            if before == said:  # in force already: another part of the same version, or a redelivery
                continue
            after = self._store.apply_acl(ev.tenant, ev.document_id, said)
            acls.in_force[key] = after
            if before is None or before.principals != after.principals:
                changed.add(key)
        for tenant, document_id in sorted(changed):
            for g, lane in lanes:
                self._on(g.name, functools.partial(lane.index.set_acl, tenant, document_id,
                                                   acls.tokens(tenant, document_id)))
        for ev in events:
            if isinstance(ev, DocumentAclChanged) and (ev.tenant, ev.document_id) in changed:
                age = (utcnow() - ev.occurred_at).total_seconds()
                self._metrics.freshness.labels(Freshness.ACL).observe(max(0.0, age))
        return acls

    def _acl_status(self, ev: DocumentAclChanged, in_force: Acl) -> list[Out]:
        said = statement(ev)
        key = document_key(ev.tenant, ev.document_id)
        if said == in_force:
            return [Out(TOPICS.status, key, DocumentStatus(
                tenant=ev.tenant, correlation_id=ev.correlation_id, document_id=ev.document_id,
                version=ev.acl_version, status=Status.INDEXED, stage=INDEXER.name, about="acl"))]
        why = (f"not applied: the ACL in force has acl_version {in_force.order.acl_version}"
               + (" (a different ACL at the same acl_version)" if in_force.order.acl_version == ev.acl_version
                  else "") + "; publish the change with a higher acl_version")
        return [Out(TOPICS.status, key, DocumentStatus(
            tenant=ev.tenant, correlation_id=ev.correlation_id, document_id=ev.document_id, version=ev.acl_version,
            status=Status.FAILED, stage=INDEXER.name, about="acl", error=why))]

    def _write(self, chunks: dict[int, list[ChunkRecord]], events: Sequence[Event], lanes: dict[str, Lane]
               ) -> dict[int, Exception | list[Out]]:
        """Upsert into each generation's index and the store; retry refused objects; map what still fails to its
        event (and a part of a generation dropped meanwhile to no outputs)."""
        failed: dict[int, Exception | list[Out]] = {}
        for name, lane in lanes.items():
            mine = {i: records for i, records in chunks.items()
                    if isinstance(ev := events[i], ChunksEmbedded) and ev.generation == name}
            if not mine:
                continue
            owner = {c.chunk_id: i for i, records in mine.items() for c in records}
            todo_all = list({c.chunk_id: c for records in mine.values() for c in records}.values())
            todo: list[ChunkRecord] = todo_all
            failures: list[WriteFailure] | None = []
            for _ in range(OBJECT_RETRIES + 1):  # a batch may repeat an event (redelivery): one object per id
                failures = self._on(name, functools.partial(lane.index.upsert, todo))
                if not failures:
                    break
                refused = {f.chunk_id for f in failures}
                todo = [c for c in todo if c.chunk_id in refused]
            if failures is None:  # the generation was dropped meanwhile: nothing of it to write
                failed |= {i: [] for i in mine}
                continue
            here: dict[int, Exception | list[Out]] = {
                owner[f.chunk_id]: PoisonMessageError(f"vector index refused chunk {f.chunk_id}: {f.message}")
                for f in failures}
            self._store.upsert_chunks(
                [c for c in todo_all if owner[c.chunk_id] not in here and c.level is Level.CHUNK], name)
            failed |= here
        return failed

    def _delete(self, ev: DocumentDeleted, lanes: Sequence[tuple[Generation, Lane]]) -> list[Out]:
        version = ev.effective_version
        applied = self._store.apply_status(DocumentRecord(ev.tenant, ev.document_id, version, Status.DELETED))
        doc = self._store.get_document(ev.tenant, ev.document_id)
        bound = cleanup_bound(doc) if doc is not None else version + 1
        for g, lane in lanes:
            self._on(g.name, functools.partial(lane.index.delete_versions, ev.tenant, ev.document_id, below=bound))
        self._store.delete_chunk_versions(ev.tenant, ev.document_id, below=bound)
        return [status(ev, Status.DELETED, version=version)] if applied else []

    def _on(self, generation: str, write: Callable[[], T]) -> T | None:
        """A write into one generation's index; None when it failed because that generation was dropped while the
        batch ran (its index is gone: `ragbus reindex cancel` or `drop-old`), which is no failure of the event."""
        try:
            return write()
        except Exception:
            if self._lanes.recorded(generation):
                raise
            log.info("index generation dropped during the batch; its writes are skipped", generation=generation)
            return None

    def _maybe_finish(self, ev: ChunksEmbedded, lane: Lane, serving: Generation, building: list[str]) -> list[Out]:
        stored = sum(1 for _, v in self._store.chunk_versions(ev.tenant, ev.document_id, ev.generation)
                     if v == ev.version)
        if stored < ev.total_chunks:
            return []
        self._store.mark_indexed(ev.generation, ev.tenant, ev.document_id, ev.version)
        self._metrics.generation_documents.labels(ev.generation).inc()
        in_serving = ev.generation == serving.name or (
            (self._store.indexed_version(serving.name, ev.tenant, ev.document_id) or -1) >= ev.version)
        applied = in_serving and self._store.apply_status(DocumentRecord(
            ev.tenant, ev.document_id, ev.version, Status.INDEXED, ev.total_chunks, "", ev.content_hash, ev.title,
            ev.source, dict(ev.metadata), ev.content_type.value))
        doc = self._store.get_document(ev.tenant, ev.document_id)
        # A newer version or a delete may have landed meanwhile: clean up to whatever the row now says.
        bound = cleanup_bound(doc) if doc is not None else ev.version
        lane.index.delete_versions(ev.tenant, ev.document_id, below=bound)
        self._store.delete_chunk_versions(ev.tenant, ev.document_id, below=bound)
        if applied and ev.document_occurred_at is not None:  # the first time this version is searchable
            age = (utcnow() - ev.document_occurred_at).total_seconds()
            self._metrics.freshness.labels(Freshness.DOCUMENT).observe(max(0.0, age))
        outs = self._left_out(ev, building)
        if applied or (ev.generation == serving.name and doc is not None and doc.version == ev.version
                       and doc.status is Status.INDEXED):
            outs.append(status(ev, Status.INDEXED, version=ev.version, chunks=ev.total_chunks))
        return outs

    def _left_out(self, ev: ChunksEmbedded, building: list[str]) -> list[Out]:
        """A version chunked before a building generation was recorded (the chunker did not know it yet) is rebuilt
        for it from the kept content: a `document.reindex` on the documents topic, ordered with the document's
        events. Said once, by the first generation the version was chunked for."""
        if not ev.generations or ev.generation != ev.generations[0]:
            return []
        return [Out(TOPICS.documents, document_key(ev.tenant, ev.document_id), DocumentReindex(
            tenant=ev.tenant, correlation_id=ev.correlation_id, document_id=ev.document_id, version=ev.version,
            generation=name, content_sha256=ev.content_hash, content_type=ev.content_type, title=ev.title,
            source=ev.source, metadata=ev.metadata))
            for name in building if name not in ev.generations
            and (self._store.indexed_version(name, ev.tenant, ev.document_id) or -1) < ev.version]


class _Acls:
    """The ACL in force per document, read from the store once per batch and kept as the batch applies more."""

    def __init__(self, store: DocumentStore) -> None:
        self._store = store
        self.in_force: dict[DocKey, Acl | None] = {}

    def current(self, key: DocKey) -> Acl | None:
        if key not in self.in_force:
            self.in_force[key] = self._store.get_acl(*key)
        return self.in_force[key]

    def tokens(self, tenant: str, document_id: str) -> tuple[str, ...]:
        acl = self.current((tenant, document_id))
        return document_tokens(tenant, None if acl is None else acl.principals)
