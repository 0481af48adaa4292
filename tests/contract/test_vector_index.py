"""The VectorIndex contract: every adapter (embedded and production) must pass all of it."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from kernel.ports import ChunkRecord, VectorIndex
from schemas.events import chunk_uuid

from .conftest import DIM


def vec(*hot: int) -> np.ndarray:  # type: ignore[type-arg]
    v = np.zeros(DIM, dtype=np.float32)
    for h in hot:
        v[h] = 1.0
    return v / np.linalg.norm(v)


def rec(doc: str, version: int, idx: int, text: str, v: np.ndarray, tenant: str = "t1",  # type: ignore[type-arg]
        **meta: object) -> ChunkRecord:
    return ChunkRecord(chunk_uuid(tenant, doc, version, idx), tenant, doc, version, idx, text, v, f"title {doc}",
                       ("Sec",), f"src/{doc}", meta)


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
    hits = filled.hybrid_search("t1", "anything", vec(2), limit=2, candidates=50, alpha=1.0)
    assert hits[0].document_id == "mongo"
    assert hits[0].score >= hits[1].score
    assert hits[0].title == "title mongo" and hits[0].section_path == ("Sec",)


def test_keyword_search_finds_the_term(filled: VectorIndex) -> None:
    hits = filled.hybrid_search("t1", "BM25 hybrid", vec(0), limit=3, candidates=50, alpha=0.0)
    assert hits[0].document_id == "weaviate"


def test_hybrid_fuses_both_signals(filled: VectorIndex) -> None:
    hits = filled.hybrid_search("t1", "BSON documents", vec(0), limit=4, candidates=50, alpha=0.5)
    ids = [h.document_id for h in hits]
    assert "mongo" in ids[:2] and "kafka" in ids[:2]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_search_never_crosses_tenants(filled: VectorIndex) -> None:
    for alpha in (0.0, 0.5, 1.0):
        assert {h.document_id for h in filled.hybrid_search("t2", "Kafka partitions", vec(0), limit=10,
                                                            candidates=50, alpha=alpha)} == {"other"}
        assert filled.hybrid_search("nobody", "Kafka", vec(0), limit=10, candidates=50, alpha=alpha) == []


def test_filters_on_document_and_metadata(filled: VectorIndex) -> None:
    hits = filled.hybrid_search("t1", "Kafka", vec(0), limit=10, candidates=50, alpha=0.5,
                                filters={"document_id": "mongo"})
    assert {h.document_id for h in hits} == {"mongo"}
    hits = filled.hybrid_search("t1", "Kafka", vec(0), limit=10, candidates=50, alpha=0.5, filters={"lang": "en"})
    assert {h.document_id for h in hits} == {"kafka"}
    assert hits[0].metadata == {"lang": "en"}


def test_quotes_in_values_are_data_not_syntax(filled: VectorIndex) -> None:
    assert filled.upsert([rec("it's", 1, 0, "O'Reilly's book.", vec(4))]) == []
    hits = filled.hybrid_search("t1", "O'Reilly", vec(4), limit=5, candidates=50, alpha=0.5,
                                filters={"document_id": "it's"})
    assert [h.document_id for h in hits] == ["it's"]


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
        filled: VectorIndex, index_opener: Callable[[], VectorIndex]) -> None:
    reader = index_opener()  # another process: knows nothing of what `filled` wrote
    assert {h.document_id for h in reader.hybrid_search("t2", "Kafka partitions", vec(0), limit=5, candidates=50,
                                                        alpha=0.5)} == {"other"}
    assert reader.chunk_versions("t1", "kafka") == filled.chunk_versions("t1", "kafka") != []
    assert reader.count("t1") == 4
    assert reader.hybrid_search("never", "Kafka", vec(0), limit=5, candidates=50, alpha=0.5) == []
    assert reader.chunk_versions("never", "kafka") == [] and reader.count("never") == 0
    reader.delete_versions("never", "kafka", below=10)  # nothing to delete is not an error
