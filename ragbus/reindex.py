"""`ragbus reindex`: build a new index generation from what ragbus holds, switch to it, roll back, drop the old.

The rebuild is not a side script: `start` records the new generation (from then on every document event
reaches it too) and publishes one `document.reindex` event per current document onto the documents topic, keyed
like the document's own events; the chunker, the embedder and the indexer (and their replicas) do the work.
A version that was on its way through the pipeline when the generation was recorded (chunked before the chunker
knew of it, indexed after the snapshot) is rebuilt for it by the indexer, which sees the generations each
version was chunked for. `resume` re-publishes whatever the new generation still lacks, for when this command
itself died half-way through publishing. `switch` is refused until every document whose current version is
indexed has that version in the new generation, and says how far it is.

What a deployment must keep for this to work: the document store's content (the chunker keeps every
document's content there, content-addressed; documents indexed before ragbus kept content are counted as
missing and must be published again). Kafka's retention does not matter: the rebuild never replays the topic.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from engine.clients import EventProducer
from infra.ops import logs
from infra.settings import Settings
from kernel.errors import ConfigurationError, RagbusError
from kernel.generations import Build, Generation, GenerationConflict, State, in_state, serving
from kernel.ports import DocumentRecord, DocumentStore
from schemas.events import ContentRef, ContentType, DocumentReindex
from schemas.topics import TOPICS, document_key

from . import wiring

log = logs.get(__name__)
PAGE = 500


class ReindexError(RagbusError):
    """A reindex command that cannot be carried out as asked; the message says what to do."""


@dataclass(frozen=True)
class Published:
    published: int
    #: (tenant, document_id) of indexed documents whose content the store does not hold.
    missing: list[tuple[str, str]]


def _generations(store: DocumentStore, settings: Settings) -> list[Generation]:
    return store.generations() or store.ensure_first(wiring.build_of(settings))


def check_build(settings: Settings, build: Build) -> None:
    """Load the model the generation would be built with and check its chunk size fits it: a build that cannot
    run is refused before anything is recorded."""
    from .registry import check_chunk_size

    if build.chunk_overlap >= build.chunk_size:
        raise ReindexError(f"chunk overlap {build.chunk_overlap} must be below the chunk size {build.chunk_size}")
    gs = wiring.for_generation(settings, build)
    try:
        model = wiring.build_embedder(gs)
    except Exception as exc:  # ragbus's own check of the name, or the model's loader (a broken file, no weights)
        why = str(exc).split(" is neither", 1)[0] if isinstance(exc, ConfigurationError) else str(exc)
        raise ReindexError(f"the embedding model {build.model!r} cannot be loaded ({type(exc).__name__}: "
                           f"{why[:200]}): name the packaged all-MiniLM-L6-v2, a sentence-transformers model "
                           "directory, or a hub model already in the local cache; nothing was recorded") from exc
    check_chunk_size(gs, model)


def start(settings: Settings, store: DocumentStore, build: Build,
          progress: Callable[[int], None] = lambda _: None, window: int = 0) -> tuple[Generation, Published]:
    generations = _generations(store, settings)
    now = serving(generations)
    if now.build == build:
        raise ReindexError(f"{now.name} serves with exactly these settings already: nothing to rebuild (set "
                           "RAGBUS_EMBEDDER_MODEL / RAGBUS_CHUNK_SIZE_TOKENS or the command's options)")
    check_build(settings, build)
    try:
        generation = store.start_generation(build, 0)
    except GenerationConflict as exc:
        raise ReindexError(str(exc)) from None
    log.info("index generation recorded; publishing the rebuild", generation=generation.name,
             differs="; ".join(now.build.differences(build)))
    store.set_queued(generation.name, store.progress(generation.name).total)
    done = publish(settings, store, generation.name, _indexed(store), progress, window)
    store.set_queued(generation.name, done.published)
    return generation, done


def resume(settings: Settings, store: DocumentStore, progress: Callable[[int], None] = lambda _: None,
           window: int = 0) -> tuple[Generation, Published]:
    building = in_state(_generations(store, settings), State.BUILDING)
    if building is None:
        raise ReindexError("no generation is building: start one with `ragbus reindex start`")
    return building, publish(settings, store, building.name, _behind(store, building.name), progress, window)


def _indexed(store: DocumentStore) -> Iterator[DocumentRecord]:
    after: tuple[str, str] | None = None
    while page := store.indexed_documents(after, PAGE):
        yield from page
        after = (page[-1].tenant, page[-1].document_id)


def _behind(store: DocumentStore, name: str) -> Iterator[DocumentRecord]:
    after: tuple[str, str] | None = None
    while keys := store.behind(name, PAGE, after):
        for tenant, document_id in keys:
            doc = store.get_document(tenant, document_id)
            if doc is not None:
                yield doc
        after = keys[-1]


def reindex_event(doc: DocumentRecord, generation: str) -> DocumentReindex:
    """The event that rebuilds `doc`'s current version into `generation` from its kept content."""
    return DocumentReindex(
        tenant=doc.tenant, correlation_id=f"reindex:{generation}", document_id=doc.document_id, version=doc.version,
        generation=generation, content_sha256=doc.content_hash,
        content_type=ContentType(doc.content_type), title=doc.title, source=doc.source, metadata=dict(doc.metadata))


class Window:
    """The rebuild's flow control: at most `size` published documents not yet indexed in the new generation.
    The documents topic is first come, first served, so everything published at once would queue new documents
    behind the whole rebuild (measured: new documents not searchable for minutes, bench/RESULTS.md, issue 27);
    with a window they wait behind at most `size`. A document counts as done once the generation has its
    version or a newer one, or the document moved on (a newer version or a delete: the live events carry it);
    one that is not done after `stall_s` stops counting (it shows in `ragbus reindex status`)."""

    def __init__(self, store: DocumentStore, generation: str, size: int, stall_s: float = 60.0,
                 poll_s: float = 0.2) -> None:
        self._store, self._generation, self._size = store, generation, size
        self._stall_s, self._poll_s = stall_s, poll_s
        self._open: deque[tuple[DocumentRecord, float]] = deque()

    def _done(self, doc: DocumentRecord) -> bool:
        if (self._store.indexed_version(self._generation, doc.tenant, doc.document_id) or -1) >= doc.version:
            return True
        now = self._store.get_document(doc.tenant, doc.document_id)
        return now is None or now.version > doc.version or now.status.value == "deleted"

    def admit(self, doc: DocumentRecord) -> None:
        """Wait until one more document may be in flight, then count `doc` as in flight."""
        if self._size <= 0:
            return
        while len(self._open) >= self._size:
            now = time.monotonic()
            still = deque((d, since) for d, since in self._open if not self._done(d))  # done in any order
            for d, since in [x for x in still if now - x[1] > self._stall_s]:
                log.warning("a rebuilt document is not indexed in the new generation yet; not waiting for it",
                            generation=self._generation, document_id=d.document_id, waited_s=round(now - since))
                still.remove((d, since))
            self._open = still
            if len(self._open) >= self._size:
                time.sleep(self._poll_s)
        self._open.append((doc, time.monotonic()))


def publish(settings: Settings, store: DocumentStore, generation: str, documents: Iterator[DocumentRecord],
            progress: Callable[[int], None], window: int = 0) -> Published:
    """One `document.reindex` per document whose content the store holds, onto the documents topic; with
    `window`, at most that many in flight at a time (Window)."""
    producer = EventProducer(settings)
    flow = Window(store, generation, window)
    sent, missing = 0, []
    for doc in documents:
        try:
            data = store.get_content(ContentRef(sha256=doc.content_hash, size=0)) if doc.content_hash else None
        except KeyError:
            data = None
        if data is None:
            missing.append((doc.tenant, doc.document_id))
            continue
        event = reindex_event(doc, generation)
        if window:
            producer.flush()  # what is in flight is on the topic: the window waits for work that can progress
            flow.admit(doc)
        producer.send(TOPICS.documents, document_key(doc.tenant, doc.document_id), event)
        sent += 1
        progress(1)
        if sent % PAGE == 0:
            producer.flush()
    producer.flush()
    return Published(sent, missing)


def report(store: DocumentStore, settings: Settings) -> list[dict[str, Any]]:
    """Every generation: state, build, documents done of total, rate and ETA while building."""
    out = []
    for g in _generations(store, settings):
        row: dict[str, Any] = {"name": g.name, "state": g.state.value, "build": g.build.__dict__,
                               "created_at": g.created_at.isoformat()}
        if g.state is State.BUILDING:
            p = store.progress(g.name)
            elapsed = max(1e-3, (datetime.now(UTC) - g.created_at).total_seconds())
            rate = p.done / elapsed
            row |= {"done": p.done, "total": p.total, "queued": g.queued, "caught_up": p.caught_up,
                    "rate_per_s": round(rate, 2),
                    "eta_s": None if p.caught_up or rate <= 0 else round((p.total - p.done) / rate)}
        out.append(row)
    return out


def switch(store: DocumentStore, settings: Settings) -> Generation:
    generations = _generations(store, settings)
    building = in_state(generations, State.BUILDING)
    if building is None:
        raise ReindexError("no generation is building: nothing to switch to (`ragbus reindex start`)")
    p = store.progress(building.name)
    if not p.caught_up:
        raise ReindexError(
            f"{building.name} has {p.done} of {p.total} documents at their current version: not switched; watch it "
            "with `ragbus reindex status --watch`, and if it stops short, `ragbus reindex resume` re-publishes "
            "what it lacks")
    try:
        store.switch(building.name)
    except GenerationConflict as exc:
        raise ReindexError(str(exc)) from None
    return building


def rollback(store: DocumentStore, settings: Settings) -> str:
    _generations(store, settings)
    try:
        return store.rollback()
    except GenerationConflict as exc:
        raise ReindexError(str(exc)) from None


def drop(store: DocumentStore, settings: Settings, state: State) -> Generation:
    """Forget the building (`cancel`) or old (`drop-old`) generation, then delete its index."""
    generation = in_state(_generations(store, settings), state)
    if generation is None:
        raise ReindexError("no generation is building: nothing to cancel" if state is State.BUILDING
                           else "no old generation is kept: nothing to drop")
    try:
        # forgotten first: stages stop writing to it at their next batch, and a batch already writing to it when
        # its index goes skips those writes (consumers/indexer.py); no query reads a generation that is not serving
        store.drop_generation(generation.name)
    except GenerationConflict as exc:
        raise ReindexError(str(exc)) from None
    from infra.models.embedder import embedding_dim

    gs = wiring.for_generation(settings, generation.build)
    index = wiring.build_index(gs, embedding_dim(generation.build.model), generation.name, generation.build)
    index.drop()
    index.close()
    return generation
