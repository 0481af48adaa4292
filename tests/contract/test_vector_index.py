"""The VectorIndex contract: every adapter (embedded and production) must pass all of it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from kernel.errors import ConfigurationError
from kernel.generations import FIRST
from kernel.ports import ChunkRecord, Level, SearchHit, SearchRequest, VectorIndex
from schemas.events import chunk_uuid, section_uuid

from .conftest import DIM


def vec(*hot: int) -> np.ndarray:  # type: ignore[type-arg]
    v = np.zeros(DIM, dtype=np.float32)
    for h in hot:
        v[h] = 1.0
    return v / np.linalg.norm(v)


def rec(doc: str, version: int, idx: int, text: str, v: np.ndarray, tenant: str = "t1",  # type: ignore[type-arg]
        section: int = 0, **meta: object) -> ChunkRecord:
    return ChunkRecord(chunk_uuid(tenant, doc, version, idx), tenant, doc, version, idx, text, v, f"title {doc}",
                       ("Sec",), f"src/{doc}", meta, section)


def sec(doc: str, version: int, number: int, text: str, v: np.ndarray, tenant: str = "t1",  # type: ignore[type-arg]
        title: str = "", path: tuple[str, ...] = ("Sec",)) -> ChunkRecord:
    return ChunkRecord(section_uuid(tenant, doc, version, number), tenant, doc, version, number, text, v,
                       title or f"title {doc}", path, f"src/{doc}", {}, number, Level.SECTION)


def search(index: VectorIndex, tenant: str, text: str, v: np.ndarray, *, level: Level = Level.CHUNK,  # type: ignore[type-arg]
           alpha: float = 0.5, candidates: int = 50, **kw: object) -> list[SearchHit]:
    """The keyword list when alpha is 0, the dense list when it is 1, both (dense first) otherwise."""
    found = index.search(tenant, SearchRequest(text=text, vector=v, candidates=candidates, levels=(level,),
                                               dense=alpha > 0, keyword=alpha < 1, **kw))  # type: ignore[arg-type]
    return found.keyword if alpha == 0 else found.dense if alpha == 1 else [*found.dense, *found.keyword]


CORPUS = [
    rec("kafka", 1, 0, "Kafka keeps messages ordered within a partition.", vec(0), lang="en"),
    rec("kafka", 1, 1, "Consumers commit offsets after processing.", vec(0, 1), lang="en"),
    rec("mongo", 1, 0, "MongoDB stores documents as BSON.", vec(2), lang="de"),
    rec("weaviate", 1, 0, "Weaviate runs hybrid search with BM25 and vectors.", vec(3)),
    rec("other", 1, 0, "Kafka partitions in another tenant.", vec(0), tenant="t2"),
]


@pytest.fixture
def filled(index: VectorIndex) -> VectorIndex:
    assert index.upsert(CORPUS) == []
    return index


def test_upsert_is_idempotent(filled: VectorIndex) -> None:
    assert filled.count() == 5
    assert filled.upsert(CORPUS[:2]) == []
    assert filled.count() == 5
    assert filled.count("t1") == 4


def test_vector_search_ranks_nearest_first(filled: VectorIndex) -> None:
    hits = search(filled, "t1", "anything", vec(2), alpha=1.0, candidates=2)
    assert len(hits) == 2 and hits[0].document_id == "mongo"
    assert hits[0].score >= hits[1].score and hits[0].score == pytest.approx(1.0, abs=1e-4)  # cosine similarity
    assert hits[0].title == "title mongo" and hits[0].section_path == ("Sec",) and hits[0].level is Level.CHUNK


def test_keyword_search_finds_the_term(filled: VectorIndex) -> None:
    hits = search(filled, "t1", "BM25 hybrid", vec(0), alpha=0.0)
    assert hits[0].document_id == "weaviate" and hits[0].score > 0
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_keyword_search_stems_and_ignores_stop_words(filled: VectorIndex) -> None:
    """English stemming in both backends: "committing offset" finds "commit offsets"; "the" finds nothing."""
    hits = search(filled, "t1", "committing the offsetting", vec(0), alpha=0.0)
    assert hits and hits[0].document_id == "kafka" and hits[0].index == 1
    assert search(filled, "t1", "the of and", vec(0), alpha=0.0) == []


def test_an_identifier_is_found_by_its_exact_token(index: VectorIndex) -> None:
    assert index.upsert([*CORPUS, rec("ticket", 1, 0, "Resolved in release XK2B9Q7ZL0PA after review.", vec(6))]) == []
    hits = search(index, "t1", "XK2B9Q7ZL0PA", vec(0), alpha=0.0)
    assert [h.document_id for h in hits] == ["ticket"]


def test_the_heading_weight_weighs_title_matches(index: VectorIndex) -> None:
    docs = [ChunkRecord(chunk_uuid("t1", "a", 1, 0), "t1", "a", 1, 0, "notes about penguins and their diet", vec(0),
                        "Penguin handbook", ("Diet",)),
            ChunkRecord(chunk_uuid("t1", "b", 1, 0), "t1", "b", 1, 0, "penguins penguins in the zoo", vec(1),
                        "Zoo guide", ("Animals",))]
    assert index.upsert(docs) == []
    text_only = search(index, "t1", "penguin handbook", vec(0), alpha=0.0, heading_weight=0.0)
    weighted = search(index, "t1", "penguin handbook", vec(0), alpha=0.0, heading_weight=3.0)
    assert text_only[0].document_id == "b" and weighted[0].document_id == "a"


def test_hybrid_request_returns_both_lists(filled: VectorIndex) -> None:
    found = filled.search("t1", SearchRequest(text="BSON documents", vector=vec(0), candidates=3))
    assert [h.document_id for h in found.dense][:1] == ["kafka"] and found.keyword[0].document_id == "mongo"
    assert len(found.dense) <= 3 and len(found.keyword) <= 3


def test_search_never_crosses_tenants(filled: VectorIndex) -> None:
    for alpha in (0.0, 0.5, 1.0):
        assert {h.document_id for h in search(filled, "t2", "Kafka partitions", vec(0), alpha=alpha)} == {"other"}
        assert search(filled, "nobody", "Kafka", vec(0), alpha=alpha) == []


def test_filters_on_document_and_metadata(filled: VectorIndex) -> None:
    hits = search(filled, "t1", "Kafka", vec(0), filters={"document_id": "mongo"})
    assert {h.document_id for h in hits} == {"mongo"}
    hits = search(filled, "t1", "Kafka", vec(0), filters={"lang": "en"})
    assert {h.document_id for h in hits} == {"kafka"}
    assert hits[0].metadata == {"lang": "en"}


def test_hits_of_both_levels_and_retrievers_carry_title_and_metadata(index: VectorIndex) -> None:
    """Fusion groups sections by parent (metadata `parent`, else the title): every hit must bring both back."""
    section = ChunkRecord(section_uuid("t1", "faq", 1, 0), "t1", "faq", 1, 0, "Threads and queues", vec(5),
                          "Library FAQ", ("Threads",), "src/faq", {"parent": "faq-page"}, 0, Level.SECTION)
    assert index.upsert([rec("faq", 1, 0, "Threads and queues share work.", vec(5), parent="faq-page"),
                         section]) == []
    for level in (Level.CHUNK, Level.SECTION):
        for alpha in (0.0, 1.0):
            hits = search(index, "t1", "threads queues", vec(5), level=level, alpha=alpha)
            assert hits and (hits[0].title, hits[0].metadata.get("parent")) in {
                ("Library FAQ", "faq-page"), ("title faq", "faq-page")}, (level, alpha, hits[0])


def test_quotes_in_values_are_data_not_syntax(filled: VectorIndex) -> None:
    assert filled.upsert([rec("it's", 1, 0, "O'Reilly's book.", vec(4))]) == []
    hits = search(filled, "t1", "O'Reilly", vec(4), filters={"document_id": "it's"})
    assert {h.document_id for h in hits} == {"it's"}


def test_section_entries_are_a_level_of_their_own(filled: VectorIndex) -> None:
    entries = [sec("kafka", 1, 0, "Kafka keeps messages ordered. Consumers commit offsets.", vec(0)),
               sec("mongo", 1, 0, "MongoDB stores documents as BSON.", vec(2))]
    assert filled.upsert(entries) == []
    dense = search(filled, "t1", "x", vec(2), level=Level.SECTION, alpha=1.0)
    assert [(h.document_id, h.level, h.section) for h in dense] == [("mongo", Level.SECTION, 0),
                                                                    ("kafka", Level.SECTION, 0)]
    keyword = search(filled, "t1", "ordered messages", vec(0), level=Level.SECTION, alpha=0.0)
    assert [h.document_id for h in keyword] == ["kafka"] and keyword[0].chunk_id == entries[0].chunk_id
    chunk_hits = search(filled, "t1", "ordered messages", vec(0), alpha=0.0)
    assert all(h.level is Level.CHUNK for h in chunk_hits)
    assert filled.count("t1") == 4 and filled.chunk_versions("t1", "mongo") == [(CORPUS[2].chunk_id, 1)]
    filled.delete_versions("t1", "mongo", below=2)
    assert search(filled, "t1", "x", vec(2), level=Level.SECTION, alpha=1.0)[0].document_id == "kafka"


def test_both_levels_in_one_request(filled: VectorIndex) -> None:
    """The retriever asks for chunks and section entries at once; each hit says which level it is."""
    entries = [sec("kafka", 1, 0, "Kafka keeps messages ordered. Consumers commit offsets.", vec(0)),
               sec("mongo", 1, 0, "MongoDB stores documents as BSON.", vec(2)),
               sec("other", 1, 0, "Kafka partitions in another tenant.", vec(0), tenant="t2")]
    assert filled.upsert(entries) == []
    found = filled.search("t1", SearchRequest(text="BSON documents", vector=vec(2), candidates=5,
                                              levels=(Level.CHUNK, Level.SECTION)))
    for hits in (found.dense, found.keyword):
        assert {(h.document_id, h.level) for h in hits if h.document_id == "mongo"} == {
            ("mongo", Level.CHUNK), ("mongo", Level.SECTION)}
        assert {h.document_id for h in hits} <= {"kafka", "mongo", "weaviate"}  # never the other tenant
    assert [(h.document_id, h.level) for h in found.dense[:2]] in (
        [("mongo", Level.CHUNK), ("mongo", Level.SECTION)], [("mongo", Level.SECTION), ("mongo", Level.CHUNK)])
    assert len(found.dense) == 6  # 4 chunks and 2 section entries of t1, within 5 per level asked for
    narrow = filled.search("t1", SearchRequest(text="BSON documents", vector=vec(2), candidates=1,
                                               levels=(Level.CHUNK, Level.SECTION), dense=False))
    assert len(narrow.keyword) <= 2 and not narrow.dense
    only = filled.search("t1", SearchRequest(text="BSON", vector=vec(2), candidates=5, levels=(Level.SECTION,),
                                             filters={"document_id": "mongo"}))
    assert [(h.document_id, h.level) for h in [*only.dense, *only.keyword]] == [("mongo", Level.SECTION)] * 2


def test_a_request_names_its_levels_and_a_depth() -> None:
    for bad in ({"levels": ()}, {"levels": (Level.CHUNK, Level.CHUNK)}, {"candidates": 0}):
        with pytest.raises(ValueError):
            SearchRequest(**({"text": "x", "vector": vec(0), "candidates": 5} | bad))  # type: ignore[arg-type]


def test_section_chunks_are_the_first_chunks_of_each_section(index: VectorIndex) -> None:
    records = [rec("doc", 1, i, f"part {i}", vec(i % DIM), section=0 if i < 3 else 1) for i in range(5)]
    assert index.upsert([*records, sec("doc", 1, 0, "part 0", vec(0))]) == []
    hits = index.section_chunks("t1", [("doc", 1, 1), ("doc", 1, 0)], 2)
    assert sorted((h.section, h.index) for h in hits) == [(0, 0), (0, 1), (1, 3), (1, 4)]
    assert all(h.level is Level.CHUNK for h in hits)
    assert index.section_chunks("t1", [("nope", 1, 0)], 1) == []
    assert index.section_chunks("t9", [("doc", 1, 0)], 1) == []


def test_delete_versions_is_bounded_by_version(filled: VectorIndex) -> None:
    assert filled.upsert([rec("kafka", 2, 0, "New kafka text.", vec(0))]) == []
    filled.delete_versions("t1", "kafka", below=2)
    assert filled.chunk_versions("t1", "kafka") == [(chunk_uuid("t1", "kafka", 2, 0), 2)]
    filled.delete_versions("t1", "kafka", below=3)
    assert filled.chunk_versions("t1", "kafka") == []
    assert filled.count("t2") == 1  # other tenants untouched


def test_a_bad_object_is_reported_not_raised(filled: VectorIndex) -> None:
    bad = rec("bad", 1, 0, "wrong size", np.ones(DIM + 1, dtype=np.float32))
    failures = filled.upsert([bad, rec("good", 1, 0, "fine", vec(5))])
    assert [f.chunk_id for f in failures] == [bad.chunk_id]
    assert filled.chunk_versions("t1", "good") and not filled.chunk_versions("t1", "bad")


def test_the_same_chunk_twice_in_one_write_is_one_row(index: VectorIndex) -> None:
    """A batch may carry a redelivered event next to its first delivery (found by bench/chaos.py)."""
    assert index.upsert([CORPUS[0], CORPUS[0], CORPUS[1]]) == []
    assert index.count("t1") == 2


def test_a_fresh_reader_sees_every_tenant_and_an_unknown_tenant_has_nothing(
        filled: VectorIndex, index_opener: Callable[..., VectorIndex]) -> None:
    reader = index_opener()  # another process: knows nothing of what `filled` wrote
    assert {h.document_id for h in search(reader, "t2", "Kafka partitions", vec(0))} == {"other"}
    assert reader.chunk_versions("t1", "kafka") == filled.chunk_versions("t1", "kafka") != []
    assert reader.count("t1") == 4
    assert search(reader, "never", "Kafka", vec(0)) == []
    assert reader.chunk_versions("never", "kafka") == [] and reader.count("never") == 0
    reader.delete_versions("never", "kafka", below=10)  # nothing to delete is not an error


# Index generations (kernel/generations.py): one index per generation, side by side in one place (directory,
# Weaviate instance), each opened as another process would open it.

ZOOKEEPER = rec("zk", 1, 0, "Zookeeper elects a leader among its ensemble.", vec(4))


def names(hits: list[SearchHit]) -> set[str]:
    return {h.document_id for h in hits}


def test_two_generations_in_one_place_are_independent(index_opener: Callable[..., VectorIndex]) -> None:
    g1, g2 = index_opener(generation=FIRST), index_opener(generation="g2")
    assert g1.upsert(CORPUS) == [] and g2.upsert([ZOOKEEPER, CORPUS[0]]) == []
    assert (g1.count(), g1.count("t1"), g1.count("t2")) == (5, 4, 1)
    assert (g2.count(), g2.count("t1"), g2.count("t2")) == (2, 2, 0)
    for reader1, reader2 in ((g1, g2), (index_opener(), index_opener(generation="g2"))):  # and fresh readers
        for alpha in (0.0, 1.0):
            assert "zk" not in names(search(reader1, "t1", "Zookeeper leader", vec(4), alpha=alpha))
            assert "zk" in names(search(reader2, "t1", "Zookeeper leader", vec(4), alpha=alpha))
            assert names(search(reader2, "t1", "BSON documents", vec(2), alpha=alpha)) <= {"zk", "kafka"}
            assert search(reader2, "t2", "Kafka partitions", vec(0), alpha=alpha) == []
        assert reader1.chunk_versions("t1", "zk") == [] and reader2.chunk_versions("t1", "mongo") == []
        assert reader2.section_chunks("t1", [("mongo", 1, 0)], 1) == []
    g1.set_acl("t1", "kafka", ("group:dev",))  # the same document, its permissions changed in one generation
    assert "kafka" not in names(search(g1, "t1", "Kafka ordered", vec(0), alpha=0.0))
    assert names(search(g2, "t1", "Kafka ordered", vec(0), alpha=0.0)) == {"kafka"}
    g2.delete_versions("t1", "kafka", below=2)  # the same chunk, deleted in one generation only
    assert g2.chunk_versions("t1", "kafka") == [] and len(g1.chunk_versions("t1", "kafka")) == 2


@pytest.mark.parametrize("dropped", [FIRST, "g2"])
def test_drop_removes_only_its_generation(index_opener: Callable[..., VectorIndex], dropped: str) -> None:
    """The old generation is dropped after a switch (`drop-old`: g1 once g2 serves) or after a rollback (g2)."""
    kept = "g2" if dropped == FIRST else FIRST
    gone, stays = index_opener(generation=dropped), index_opener(generation=kept)
    assert gone.upsert([ZOOKEEPER, *CORPUS[:2]]) == [] and stays.upsert(CORPUS) == []
    gone.drop()
    for reader in (stays, index_opener(generation=kept)):
        assert reader.count() == 5 and reader.chunk_versions("t1", "kafka") != []
        assert names(search(reader, "t1", "Kafka ordered", vec(0), alpha=0.0)) >= {"kafka"}
    again = index_opener(generation=dropped)  # after a drop, the generation's index starts empty
    assert again.count() == 0 and again.count("t1") == 0 and again.chunk_versions("t1", "kafka") == []
    assert search(again, "t1", "Kafka Zookeeper", vec(0)) == []
    assert again.upsert([ZOOKEEPER]) == [] and again.count() == 1
    assert names(search(again, "t1", "Zookeeper", vec(4), alpha=0.0)) == {"zk"}
    assert stays.count() == 5 and stays.chunk_versions("t1", "zk") == []


def test_the_first_generation_is_the_index_from_before_generations(
        index_opener: Callable[..., VectorIndex]) -> None:
    """Every data directory and collection from before generations is g1: opened without naming a generation
    (as before), written, and found as g1 under the same name; g2 is a name of its own beside it."""
    before = index_opener()
    assert before.upsert(CORPUS) == []
    g1, g2 = index_opener(generation=FIRST), index_opener(generation="g2")
    assert g1.name == before.name and g2.name.lower() == f"{before.name}_g2".lower()  # type: ignore[attr-defined]
    assert g1.count() == 5 and g1.chunk_versions("t1", "kafka") == before.chunk_versions("t1", "kafka") != []
    assert names(search(g1, "t1", "BSON", vec(2), alpha=0.0)) == {"mongo"} and g2.count() == 0


def test_a_generation_holding_another_models_vectors_is_refused_naming_it(
        index_opener: Callable[..., VectorIndex]) -> None:
    """A generation is opened with its own recorded model: a mismatch means its index was changed by hand. The
    refusal names the index and generation, the models, and how a model is changed; other generations open."""
    index_opener(generation="g2", model="model-a").close()
    index_opener(generation="g2", model="model-a").close()  # its own model reopens it
    index_opener(model="model-b").close()  # another generation, another model: no conflict
    with pytest.raises(ConfigurationError) as refused:
        index_opener(generation="g2", model="model-b")
    message = str(refused.value)
    assert "generation g2" in message and "'model-a'" in message and "'model-b'" in message
    assert "_g2" in message and "ragbus reindex start --model NAME" in message


def test_lancedb_keeps_the_first_generation_in_the_table_of_before_generations(tmp_path: Path) -> None:
    """A data directory from before generations has one table, `chunks`: it is g1; g2 is `chunks_g2` beside it."""
    import json

    import lancedb
    import pyarrow as pa

    from infra.stores.lance import LanceVectorIndex

    legacy = pa.schema([  # the first schema ragbus wrote (upgraded in place when opened)
        pa.field("chunk_id", pa.string()), pa.field("tenant", pa.string()), pa.field("document_id", pa.string()),
        pa.field("version", pa.int64()), pa.field("idx", pa.int32()), pa.field("text", pa.string()),
        pa.field("title", pa.string()), pa.field("section_path", pa.string()), pa.field("source", pa.string()),
        pa.field("meta", pa.list_(pa.string())), pa.field("metadata", pa.string()),
        pa.field("vector", pa.list_(pa.float32(), DIM))])
    db = lancedb.connect(str(tmp_path))
    db.create_table("chunks", schema=legacy).add([{
        "chunk_id": "c1", "tenant": "t1", "document_id": "old", "version": 1, "idx": 0, "text": "Written long ago.",
        "title": "Old", "section_path": json.dumps([]), "source": "", "meta": [], "metadata": "{}", "vector": vec(3)}])
    g1, g2 = LanceVectorIndex(tmp_path, DIM, generation=FIRST), LanceVectorIndex(tmp_path, DIM, generation="g2")
    try:
        assert (g1.name, g2.name) == ("chunks", "chunks_g2")
        assert g1.chunk_versions("t1", "old") == [("c1", 1)] and g1.count() == 1 and g2.count() == 0
        assert names(search(g1, "t1", "written", vec(3), alpha=0.0)) == {"old"}
        assert sorted(db.list_tables().tables) == ["chunks", "chunks_g2"]
        g2.drop()
        assert db.list_tables().tables == ["chunks"]
    finally:
        g1.close()
        g2.close()


def test_the_composition_root_opens_a_generation_with_its_recorded_build(tmp_path: Path) -> None:
    """`build_index` with a generation's Build records that build's model (and passage prefix), not the settings'
    (which may already name the next model), in that generation's table."""
    from infra.settings import EmbedderSettings, Settings
    from kernel.generations import Build
    from ragbus import wiring

    settings = Settings(data_dir=tmp_path, embedder=EmbedderSettings(model="model-now"))
    build = Build(model="model-then", passage_prefix="passage: ")
    g2 = wiring.build_index(settings, DIM, "g2", build)
    g2.close()
    wiring.build_index(settings, DIM, "g2", build).close()  # its own build reopens it
    wiring.build_index(settings, DIM).close()  # g1 under the settings' model, beside it
    with pytest.raises(ConfigurationError,
                       match=r"'chunks_g2'.*generation g2.*model-then prefix='passage: '.*'model-now'"):
        wiring.build_index(settings, DIM, "g2")  # the settings' model is not g2's
