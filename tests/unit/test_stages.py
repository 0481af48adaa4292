"""The stage functions, without a broker: real embedded stores, a hashing embedder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chunking.splitter import Chunker
from consumers.answerer import Answerer
from consumers.indexer import Indexer
from infra.models.embedder import load_tokenizer
from infra.ops.metrics import Metrics
from infra.stores.lance import LanceVectorIndex
from infra.stores.sqlite import SqliteAnswerCache, SqliteDocumentStore
from kernel.errors import PoisonMessageError
from retrieval.extractive import ExtractiveAnswerer
from retrieval.retriever import RetrievalConfig, Retriever
from schemas.events import (
    ChunksEmbedded,
    ChunksProduced,
    ContentType,
    DocumentArrived,
    DocumentDeleted,
    QueryRequested,
    Status,
)
from schemas.topics import TOPICS
from streams.chunker import chunk_event
from streams.embedder import CachedEmbedder, embed_events
from tests.doubles import DictCache, HashEmbedder, Outputs


class Pipeline:
    """The stages wired in-process, so tests can drive any interleaving of events."""

    def __init__(self, tmp: Path, chunk_tokens: int = 48) -> None:
        self.embedder = HashEmbedder()
        self.cached = CachedEmbedder(self.embedder, DictCache())
        self.chunker = Chunker(load_tokenizer("all-MiniLM-L6-v2"), chunk_tokens, 8)
        self.store = SqliteDocumentStore(tmp / "db.sqlite")
        self.answer_cache = SqliteAnswerCache(tmp / "db.sqlite")
        self.index = LanceVectorIndex(tmp / "lance", self.embedder.dim)
        self.outputs = Outputs()
        self.indexer = Indexer(self.index, self.store, Metrics(), self.embedder.dim)

    def embedded(self, ev: DocumentArrived | DocumentDeleted) -> list[ChunksEmbedded | DocumentDeleted]:
        chunked = [o.event for o in chunk_event(ev, self.chunker, self.store.get_content) if o.topic is TOPICS.chunks]
        results = embed_events(chunked, self.cached)  # type: ignore[arg-type]
        return [o.event for r in results if not isinstance(r, Exception) for o in r if o.topic is TOPICS.embedded]  # type: ignore[misc]

    def index_events(self, events: list[Any]) -> None:
        for result in self.indexer.handle(events):
            assert not isinstance(result, Exception), result
            self.outputs.extend(result)

    def run(self, ev: DocumentArrived | DocumentDeleted) -> None:
        self.index_events(self.embedded(ev))

    def retriever(self) -> Retriever:
        return Retriever(self.embedder, self.index, RetrievalConfig(candidates=50))

    def versions(self, doc: str, tenant: str = "default") -> tuple[set[int], set[int]]:
        return ({v for _, v in self.index.chunk_versions(tenant, doc)},
                {v for _, v in self.store.chunk_versions(tenant, doc)})


@pytest.fixture
def pipe(tmp_path: Path) -> Pipeline:
    return Pipeline(tmp_path)


LONG = "\n\n".join(f"Paragraph {i}: Kafka partitions keep order for one key, and consumers commit offsets."
                   for i in range(40))


def doc(version: int, text: str = LONG, doc_id: str = "d1", **kw: Any) -> DocumentArrived:
    return DocumentArrived(document_id=doc_id, version=version, text=text, title="T", **kw)


def test_chunker_is_deterministic_and_splits_into_parts(pipe: Pipeline) -> None:
    outs = chunk_event(doc(1, LONG * 4), pipe.chunker, pipe.store.get_content)
    again = chunk_event(doc(1, LONG * 4), pipe.chunker, pipe.store.get_content)
    parts = [o.event for o in outs if isinstance(o.event, ChunksProduced)]
    assert len(parts) >= 2 and sum(len(p.chunks) for p in parts) == parts[0].total_chunks
    assert [p.chunks for p in parts] == [o.event.chunks for o in again if isinstance(o.event, ChunksProduced)]
    status = [o.event for o in outs if o.topic is TOPICS.status]
    assert [s.status for s in status] == [Status.CHUNKED]  # type: ignore[attr-defined]


def test_claim_checked_content_is_loaded_and_verified(pipe: Pipeline) -> None:
    ref = pipe.store.put_content(b"# Title\n\nStored body text.")
    outs = chunk_event(DocumentArrived(document_id="big", content_ref=ref, content_type=ContentType.MARKDOWN),
                       pipe.chunker, pipe.store.get_content)
    assert outs[0].event.chunks[0].text == "Stored body text."  # type: ignore[attr-defined]
    missing = DocumentArrived(document_id="big", content_ref=ref.model_copy(update={"sha256": "a" * 64}))
    with pytest.raises(PoisonMessageError, match="not in the store"):
        chunk_event(missing, pipe.chunker, pipe.store.get_content)


def test_index_then_redelivery_changes_nothing(pipe: Pipeline) -> None:
    events = pipe.embedded(doc(1))
    pipe.index_events(events)
    first = (pipe.index.chunk_versions("default", "d1"), pipe.store.chunk_versions("default", "d1"))
    pipe.index_events(events)  # redelivered batch
    assert (pipe.index.chunk_versions("default", "d1"), pipe.store.chunk_versions("default", "d1")) == first
    assert pipe.store.get_document("default", "d1").status is Status.INDEXED  # type: ignore[union-attr]


def test_same_text_again_is_not_re_embedded(pipe: Pipeline) -> None:
    pipe.run(doc(1))
    before = pipe.embedder.embedded
    pipe.run(doc(2))  # same text, new version
    assert pipe.embedder.embedded == before
    assert pipe.versions("d1") == ({2}, {2})


def test_new_text_replaces_old_chunks_everywhere(pipe: Pipeline) -> None:
    pipe.run(doc(1))
    pipe.run(doc(2, "A completely different short text about Weaviate."))
    assert pipe.versions("d1") == ({2}, {2})
    assert pipe.store.get_document("default", "d1").version == 2  # type: ignore[union-attr]


def test_an_older_version_arriving_late_never_overwrites(pipe: Pipeline) -> None:
    old = pipe.embedded(doc(1))
    pipe.run(doc(2, "Newer text."))
    pipe.index_events(old)
    assert pipe.versions("d1") == ({2}, {2})


def test_late_chunks_cannot_resurrect_a_deleted_document(pipe: Pipeline) -> None:
    late = pipe.embedded(doc(1))
    pipe.run(doc(1))
    pipe.run(DocumentDeleted(document_id="d1", version=1))
    assert pipe.versions("d1") == (set(), set())
    pipe.index_events(late)
    assert pipe.versions("d1") == (set(), set())
    assert pipe.store.get_document("default", "d1").status is Status.DELETED  # type: ignore[union-attr]


def test_delete_and_write_in_one_batch_commute(pipe: Pipeline) -> None:
    pipe.index_events(pipe.embedded(DocumentDeleted(document_id="d1", version=1)) + pipe.embedded(doc(1)))
    assert pipe.versions("d1") == (set(), set())
    pipe.index_events(pipe.embedded(doc(2)) + pipe.embedded(DocumentDeleted(document_id="d1", version=1)))
    assert pipe.versions("d1") == ({2}, {2})


def test_a_version_is_indexed_only_when_all_parts_arrived(pipe: Pipeline) -> None:
    parts = pipe.embedded(doc(1, LONG * 4))
    assert len(parts) >= 2
    pipe.index_events(parts[:-1])
    assert pipe.store.get_document("default", "d1") is None
    pipe.index_events(parts[-1:])
    assert pipe.store.get_document("default", "d1").status is Status.INDEXED  # type: ignore[union-attr]
    statuses = [e.status for e in pipe.outputs.of(TOPICS.status)]
    assert statuses == [Status.INDEXED]


def test_wrong_vector_dimension_is_poison_with_a_failed_status(pipe: Pipeline) -> None:
    ev = pipe.embedded(doc(1))[0]
    bad = ev.model_copy(update={"dim": 3})  # type: ignore[union-attr]
    [result] = pipe.indexer.handle([bad])
    assert isinstance(result, PoisonMessageError) and "expects" in str(result)
    stage = pipe.indexer.stage(1, 0)
    assert stage.on_failure is not None
    assert [o.event.status for o in stage.on_failure(bad, result)] == [Status.FAILED]  # type: ignore[attr-defined]


class CountingModel(ExtractiveAnswerer):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def answer(self, *args: Any, **kw: Any) -> Any:
        self.calls += 1
        return super().answer(*args, **kw)


def answerer(pipe: Pipeline) -> tuple[Answerer, CountingModel]:
    model = CountingModel()
    return Answerer(pipe.retriever(), model, pipe.store, Metrics(), pipe.outputs.append, cache=pipe.answer_cache), model


def test_answer_cites_the_right_document_and_redelivery_does_not_call_the_model(pipe: Pipeline) -> None:
    pipe.run(doc(1, "Weaviate stores vectors and runs hybrid search.", doc_id="weaviate"))
    pipe.run(doc(1, "MongoDB keeps the documents and their status.", doc_id="mongo"))
    sink, model = answerer(pipe)
    q = QueryRequested(query_id="q1", text="Where are the document statuses kept?", top_k=2)
    first = sink.answer(q)
    assert first.citations[0].document_id == "mongo"
    assert first.degraded and "extractive" in first.degraded_reason
    assert sink.answer(q) == first
    assert model.calls == 1


def test_retrieval_never_crosses_tenants(pipe: Pipeline) -> None:
    pipe.run(doc(1, "Secret plans of tenant a.", doc_id="s", tenant="a"))
    sink, _ = answerer(pipe)
    got = sink.answer(QueryRequested(query_id="q2", tenant="b", text="secret plans", retrieve_only=True))
    assert got.citations == []
    got = sink.answer(QueryRequested(query_id="q3", tenant="a", text="secret plans", retrieve_only=True))
    assert [c.document_id for c in got.citations] == ["s"]


def test_an_event_repeated_within_one_batch_is_written_once(pipe: Pipeline) -> None:
    events = pipe.embedded(doc(1))
    pipe.index_events(events + events)
    assert len(pipe.index.chunk_versions("default", "d1")) == events[0].total_chunks  # type: ignore[union-attr]
    assert len(pipe.store.chunk_versions("default", "d1")) == events[0].total_chunks  # type: ignore[union-attr]


def test_a_dead_lettered_document_event_gets_a_failed_status_for_its_version() -> None:
    """What every document stage publishes for an event it dead-letters, so `ingest --wait` and the store learn why
    (a DocumentArrived without a version is its event time in microseconds; a delete has no version to fail)."""
    from datetime import UTC, datetime

    from kernel.stage import failed_status
    from schemas.events import ChunksProduced, DocumentArrived, DocumentDeleted

    at = datetime(2026, 1, 15, 9, 30, tzinfo=UTC)
    arrived = DocumentArrived(tenant="acme", document_id="a.md", text="x", correlation_id="c-1", occurred_at=at)
    part = ChunksProduced(tenant="acme", document_id="a.md", version=7, content_hash="0" * 64, part=0, parts=1,
                          total_chunks=0, chunks=[], correlation_id="c-2")
    outs = [failed_status(ev, ValueError("bad"), "chunker") for ev in (arrived, part)]
    assert [(o.topic.name, o.key) for out in outs for o in out] == [("status.v1", b"acme/a.md")] * 2
    statuses = [out[0].event for out in outs]
    assert [(s.version, s.correlation_id, s.status, s.stage, s.error) for s in statuses] == [  # type: ignore[attr-defined]
        (1768469400000000, "c-1", Status.FAILED, "chunker", "ValueError: bad"),
        (7, "c-2", Status.FAILED, "chunker", "ValueError: bad")]
    assert failed_status(DocumentDeleted(tenant="acme", document_id="a.md"), ValueError("bad"), "chunker") == []
