"""Index generations through the stage functions, without a broker: real embedded stores (SQLite, LanceDB), a
hashing embedder, two chunk sizes. What the operator commands record is the store's (its contract suite); what
these tests hold is what the stages do with it: every event reaches every live generation, a rebuild converges,
queries read exactly the serving one, `indexed` means searchable in the serving one."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from chunking.splitter import Chunker
from consumers.answerer import Answerer
from consumers.indexer import Indexer, Lane
from infra.models.embedder import load_tokenizer
from infra.ops.metrics import Metrics
from infra.stores.lance import LanceVectorIndex
from infra.stores.sqlite import SqliteDocumentStore
from kernel.generations import FIRST, Build, Lanes, State, recorded
from ragbus.reindex import reindex_event
from retrieval.extractive import ExtractiveAnswerer
from retrieval.retriever import RetrievalConfig, Retriever
from schemas.events import (
    ChunksEmbedded,
    ChunksProduced,
    DocumentAclChanged,
    DocumentArrived,
    DocumentDeleted,
    DocumentReindex,
    DocumentStatus,
    QueryRequested,
    Status,
)
from schemas.topics import TOPICS
from streams.chunker import chunk_event
from streams.embedder import CachedEmbedder, embed_events
from tests.doubles import DictCache, HashEmbedder, Outputs

G1 = Build(model="hash-test", chunk_size=48, chunk_overlap=8)
G2 = dataclasses.replace(G1, chunk_size=96)
LONG = "\n\n".join(f"Paragraph {i}: Kafka partitions keep order for one key, and consumers commit offsets."
                   for i in range(30))


class Generations:
    """The chunker, embedder and indexer over the live generations, as the registry wires them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.store = SqliteDocumentStore(tmp / "db.sqlite")
        self.embedder = HashEmbedder()
        self.cached = CachedEmbedder(self.embedder, DictCache())
        tokenizer = load_tokenizer("all-MiniLM-L6-v2")
        self.chunkers = Lanes(recorded(self.store, G1),
                              lambda g: Chunker(tokenizer, g.build.chunk_size, g.build.chunk_overlap))
        self.indexes: Lanes[Lane] = Lanes(
            recorded(self.store, G1), lambda g: Lane(LanceVectorIndex(tmp / "lance", self.embedder.dim,
                                                                      generation=g.name), self.embedder.dim))
        self.indexer = Indexer(self.indexes, self.store, Metrics())
        self.outputs = Outputs()

    def run(self, *events: DocumentArrived | DocumentDeleted | DocumentAclChanged | DocumentReindex) -> None:
        chunkers = self.chunkers.each()
        produced: list[Any] = []
        for ev in events:
            outs = chunk_event(ev, chunkers, self.store.get_content, keep=self.store.put_content)
            self.outputs.extend(o for o in outs if o.topic is TOPICS.status)
            produced += [o.event for o in outs if o.topic is TOPICS.chunks]
        embedded = [o.event for r in embed_events(produced, lambda _: self.cached) if not isinstance(r, Exception)
                    for o in r if o.topic is TOPICS.embedded]
        for result in self.indexer.handle(embedded):
            assert not isinstance(result, Exception), result
            self.outputs.extend(result)
        self.republished = [o.event for o in self.outputs if o.topic is TOPICS.documents]

    def index(self, name: str) -> LanceVectorIndex:
        lane = self.indexes.get(name)
        assert lane is not None, f"{name} is not live"
        assert isinstance(lane.index, LanceVectorIndex)
        return lane.index

    def versions(self, name: str, doc: str) -> set[int]:
        return {v for _, v in self.index(name).chunk_versions("default", doc)}

    def rebuild(self, name: str) -> int:
        """What `ragbus reindex start` publishes, run through the stages."""
        events = [reindex_event(d, name) for d in self.store.indexed_documents()]
        self.run(*events)
        return len(events)

    def indexed(self) -> list[DocumentStatus]:
        return [s for s in self.outputs.of(TOPICS.status) if s.status is Status.INDEXED]


@pytest.fixture
def gens(tmp_path: Path) -> Generations:
    return Generations(tmp_path)


def doc(doc_id: str, version: int, text: str = LONG, **kw: Any) -> DocumentArrived:
    return DocumentArrived(document_id=doc_id, version=version, text=text, title=f"Title {doc_id}", **kw)


def test_a_rebuild_from_kept_content_catches_up_and_the_switch_serves_the_new_chunking(gens: Generations) -> None:
    gens.run(doc("a", 1), doc("b", 1, text="Short text about offsets and consumer groups."))
    g1_chunks = len(gens.index(FIRST).chunk_versions("default", "a"))
    gens.store.start_generation(G2, 0)
    assert gens.store.progress("g2").done == 0 and gens.store.progress("g2").total == 2

    assert gens.rebuild("g2") == 2  # inline text, rebuilt from what the chunker kept

    assert gens.store.progress("g2").caught_up
    g2_chunks = gens.index("g2").chunk_versions("default", "a")
    assert 0 < len(g2_chunks) < g1_chunks  # the new chunk size, in its own index, with its own ids
    assert not {c for c, _ in g2_chunks} & {c for c, _ in gens.index(FIRST).chunk_versions("default", "a")}
    assert len(gens.indexed()) == 2  # the rebuild reported nothing new to publishers

    gens.store.switch("g2")
    serving, lane = gens.indexes.serving()
    assert serving.name == "g2" and lane.index is gens.index("g2")
    assert {g.name: g.state for g in gens.store.generations()} == {"g1": State.OLD, "g2": State.SERVING}


def test_every_live_event_reaches_both_generations_while_one_builds(gens: Generations) -> None:
    gens.run(doc("a", 1))
    gens.store.start_generation(G2, 0)
    gens.rebuild("g2")

    gens.run(doc("a", 2, text=LONG + "\n\nParagraph new: a second version."), doc("c", 1))
    assert gens.versions(FIRST, "a") == gens.versions("g2", "a") == {2}
    assert gens.versions("g2", "c") == {1}
    assert gens.store.progress("g2").caught_up

    gens.run(DocumentDeleted(document_id="a", version=2))
    assert gens.versions(FIRST, "a") == gens.versions("g2", "a") == set()
    assert not gens.store.chunk_versions("default", "a", "g2")


def test_a_document_deleted_during_the_rebuild_is_not_in_the_new_generation(gens: Generations) -> None:
    gens.run(doc("a", 1), doc("b", 1))
    gens.store.start_generation(G2, 0)
    # published before the delete, reaching the chunker after it
    late = [reindex_event(d, "g2") for d in gens.store.indexed_documents()]
    gens.run(DocumentDeleted(document_id="a", version=1))
    gens.run(*late)
    assert gens.versions("g2", "a") == set() and gens.versions(FIRST, "a") == set()
    assert gens.versions("g2", "b") == {1}
    assert gens.store.progress("g2").caught_up  # a deleted document is not waited for


def test_an_acl_change_reaches_every_live_generation(gens: Generations) -> None:
    gens.run(doc("a", 1))
    gens.store.start_generation(G2, 0)
    gens.rebuild("g2")
    gens.run(DocumentAclChanged(document_id="a", acl=["group:eng"], acl_version=1))
    for name in (FIRST, "g2"):
        config = RetrievalConfig(candidates=20)
        hits = Retriever(gens.embedder, gens.index(name), config).retrieve("default", "Kafka partitions order", 5)
        assert hits == [], name  # public askers no longer read it, in either generation


def test_indexed_is_reported_once_the_serving_generation_has_the_version(gens: Generations) -> None:
    gens.run(doc("a", 1))
    gens.store.start_generation(G2, 0)
    gens.rebuild("g2")
    before = len(gens.indexed())
    update = doc("a", 2, text="A new version about retention.")
    chunked = [o.event for o in chunk_event(update, gens.chunkers.each(), gens.store.get_content)
               if o.topic is TOPICS.chunks]
    embedded: list[ChunksEmbedded] = [o.event for r in embed_events(chunked, lambda _: gens.cached)  # type: ignore[misc]
                                      if not isinstance(r, Exception) for o in r if o.topic is TOPICS.embedded]
    new_first = [e for e in embedded if e.generation == "g2"]
    old_later = [e for e in embedded if e.generation == FIRST]

    gens.outputs.extend(o for r in gens.indexer.handle(new_first) if not isinstance(r, Exception) for o in r)
    assert len(gens.indexed()) == before  # only g2 has it: not searchable for queries yet
    gens.outputs.extend(o for r in gens.indexer.handle(old_later) if not isinstance(r, Exception) for o in r)
    assert [s.version for s in gens.indexed()[before:]] == [2]


def test_after_a_switch_the_old_generation_finishing_reports_what_the_new_one_had_first(gens: Generations) -> None:
    gens.run(doc("a", 1))
    gens.store.start_generation(G2, 0)
    gens.rebuild("g2")
    update = doc("a", 2, text="A new version about retention.")
    chunked = [o.event for o in chunk_event(update, gens.chunkers.each(), gens.store.get_content)
               if o.topic is TOPICS.chunks]
    embedded: list[ChunksEmbedded] = [o.event for r in embed_events(chunked, lambda _: gens.cached)  # type: ignore[misc]
                                      if not isinstance(r, Exception) for o in r if o.topic is TOPICS.embedded]
    gens.indexer.handle([e for e in embedded if e.generation == "g2"])
    gens.store.switch("g2")
    before = len(gens.indexed())
    gens.outputs.extend(o for r in gens.indexer.handle([e for e in embedded if e.generation == FIRST])
                        if not isinstance(r, Exception) for o in r)
    assert [s.version for s in gens.indexed()[before:]] == [2]
    assert gens.store.get_document("default", "a").status is Status.INDEXED  # type: ignore[union-attr]


def test_parts_of_a_generation_no_longer_live_are_dropped(gens: Generations) -> None:
    gens.run(doc("a", 1))
    gens.store.start_generation(G2, 0)
    chunked: list[ChunksProduced] = [o.event for o in chunk_event(doc("b", 1), gens.chunkers.each(),  # type: ignore[misc]
                                                                  gens.store.get_content) if o.topic is TOPICS.chunks]
    gens.store.drop_generation("g2")
    assert [r for r in embed_events(chunked, lambda g: gens.cached if g == FIRST else None)
            if r == []], "the embedder drops g2's parts"
    embedded = [o.event for r in embed_events(chunked, lambda _: gens.cached) if not isinstance(r, Exception)
                for o in r if o.topic is TOPICS.embedded]
    results = gens.indexer.handle(embedded)
    assert not any(isinstance(r, Exception) for r in results)
    assert gens.versions(FIRST, "b") == {1}
    assert gens.indexes.get("g2") is None


def test_a_reindex_event_for_a_generation_that_is_gone_is_skipped(gens: Generations) -> None:
    gens.run(doc("a", 1))
    [d] = gens.store.indexed_documents()
    event = reindex_event(d, "g7")
    assert chunk_event(event, gens.chunkers.each(), gens.store.get_content) == []


def test_the_answerer_reads_exactly_the_serving_generation(gens: Generations) -> None:
    gens.run(doc("a", 1))
    gens.store.start_generation(G2, 0)
    gens.rebuild("g2")
    retrievers: Lanes[Retriever] = Lanes(recorded(gens.store, G1), lambda g: Retriever(
        gens.embedder, gens.index(g.name), RetrievalConfig(candidates=20)))
    answerer = Answerer(lambda: retrievers.serving()[1], ExtractiveAnswerer(), gens.store, Metrics(),
                        lambda _: None, cache=None)

    def cited(query_id: str) -> set[str]:
        [result] = answerer.handle([QueryRequested(query_id=query_id, text="Kafka partitions order",
                                                   retrieve_only=True)])
        assert not isinstance(result, Exception)
        return {c.chunk_id for c in result[0].event.citations}  # type: ignore[attr-defined]

    ids = {name: {c for c, _ in gens.index(name).chunk_versions("default", "a")} for name in (FIRST, "g2")}
    assert cited("q1") and cited("q1") <= ids[FIRST]
    gens.store.switch("g2")
    assert cited("q2") and cited("q2") <= ids["g2"]
    gens.store.rollback()
    assert cited("q3") <= ids[FIRST]


def test_a_version_chunked_before_the_generation_was_recorded_is_rebuilt_for_it(gens: Generations) -> None:
    gens.run(doc("a", 1))
    on_its_way = [o.event for o in chunk_event(doc("a", 2, text="Version two, about retention."),
                                               gens.chunkers.each(), gens.store.get_content,
                                               keep=gens.store.put_content) if o.topic is TOPICS.chunks]
    gens.store.start_generation(G2, 0)
    assert gens.rebuild("g2") == 1  # the snapshot: version 1, the one indexed now
    embedded = [o.event for r in embed_events(on_its_way, lambda _: gens.cached) if not isinstance(r, Exception)
                for o in r if o.topic is TOPICS.embedded]
    outs = [o for r in gens.indexer.handle(embedded) if not isinstance(r, Exception) for o in r]
    [again] = [o.event for o in outs if o.topic is TOPICS.documents]
    assert isinstance(again, DocumentReindex) and (again.generation, again.version) == ("g2", 2)
    assert gens.versions("g2", "a") == {1} and not gens.store.progress("g2").caught_up
    gens.run(again)
    assert gens.versions("g2", "a") == {2} and gens.store.progress("g2").caught_up
    assert not gens.republished  # a version chunked for both is never re-published


class Gone:
    """A dropped generation's index, as a process still holding it sees it: every write fails."""

    def __getattr__(self, name: str) -> Any:
        def fail(*_: Any, **__: Any) -> Any:
            raise RuntimeError("lance error: Not found: chunks_g2.lance/_versions")
        return fail


def test_a_generation_dropped_while_a_batch_writes_to_it_costs_nothing_else(gens: Generations) -> None:
    gens.run(doc("a", 1))
    gens.store.start_generation(G2, 0)
    chunked = [o.event for o in chunk_event(doc("b", 1), gens.chunkers.each(), gens.store.get_content)
               if o.topic is TOPICS.chunks]
    embedded = [o.event for r in embed_events(chunked, lambda _: gens.cached) if not isinstance(r, Exception)
                for o in r if o.topic is TOPICS.embedded]
    # a view refreshed once, before the drop: the batch began while g2 was live
    lanes: Lanes[Lane] = Lanes(recorded(gens.store, G1), lambda g: gens.indexes.get(g.name) if g.name == FIRST
                               else Lane(Gone(), gens.embedder.dim), refresh_s=float("inf"))  # type: ignore[arg-type]
    indexer = Indexer(lanes, gens.store, Metrics())
    with pytest.raises(RuntimeError, match="Not found"):  # g2 still recorded: a real failure, the batch waits
        indexer.handle(embedded)
    gens.store.drop_generation("g2")  # `ragbus reindex cancel`
    results = indexer.handle(embedded)
    assert not any(isinstance(r, Exception) for r in results)
    assert gens.versions(FIRST, "b") == {1}
