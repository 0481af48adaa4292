"""Fusion of two retrievers over two levels, exact matches, and the Retriever's optional models."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from infra.stores.lance import LanceVectorIndex
from kernel.errors import RetrievalModelError
from kernel.ports import Candidates, ChunkRecord, Level, SearchHit, SearchRequest
from retrieval.fusion import Weights, confident_first, fuse, newest_versions, query_alpha
from retrieval.retriever import Mode, RetrievalConfig, Retriever
from schemas.events import chunk_uuid, section_uuid
from tests.doubles import HashEmbedder


def hit(doc: str, score: float, *, idx: int = 0, section: int = 0, version: int = 1,
        level: Level = Level.CHUNK, title: str = "", parent: str | None = None) -> SearchHit:
    return SearchHit(f"{doc}-{level.value}-{version}-{idx}", doc, version, idx, f"text of {doc}", score,
                     title=title, metadata={} if parent is None else {"parent": parent}, section=section,
                     level=level)


NEIGHBOURS = [hit(f"near{i}", 0.50 - i * 0.01) for i in range(10)]  # dense: close scores, no confidence


def chunks_only(alpha: float = 0.75, **kw: float) -> Weights:
    """Weights for evidence from chunks alone (no section entries in these lists)."""
    return Weights(alpha=alpha, section_weight=0.0, keyword_section_weight=0.0, **kw)


def test_a_confident_keyword_hit_survives_fusion() -> None:
    """The issue's case: one document holds a unique identifier; BM25 ranks it first (score ~10, nothing
    else matches); dense ranks ten neighbours that share nothing with the query above it."""
    keyword = [hit("ticket", 10.0)]
    dense = [*NEIGHBOURS, hit("ticket", 0.30)]
    ranked = [s.key[0] for s in fuse(dense, keyword, [], [], chunks_only())]
    assert ranked[0] == "ticket"
    without = [s.key[0] for s in fuse(dense, keyword, [], [], chunks_only(exact_ratio=0))]
    assert "ticket" not in without[:5]  # what relative-score fusion alone did: capped at 1 - alpha


def test_only_a_wide_margin_counts_as_confident() -> None:
    assert confident_first([hit("a", 10.0), hit("b", 6.0)], 2.0) is None
    assert confident_first([hit("a", 10.0), hit("b", 4.0)], 2.0) == ("a", 1, 0)
    assert confident_first([hit("a", 10.0), hit("a", 9.0, idx=1)], 2.0) == ("a", 1, 0)  # one section, two chunks
    assert confident_first([hit("a", 10.0)], 0.0) is None  # disabled
    assert confident_first([], 2.0) is None


def test_without_a_margin_fusion_is_left_alone() -> None:
    keyword = [hit("near5", 7.0), hit("near1", 6.5), hit("near9", 6.0)]
    ranked = [s.key[0] for s in fuse(NEIGHBOURS, keyword, [], [], chunks_only())]
    assert ranked == [s.key[0] for s in fuse(NEIGHBOURS, keyword, [], [], chunks_only(exact_ratio=0))]
    assert ranked[:2] == ["near1", "near0"]  # 0.75 * 0.89 + 0.25 * 0.5 against 0.75 * 1


def test_section_entries_and_chunks_are_combined() -> None:
    """`lead` matches as a section (its title, path and lead) and by a good chunk; `spot` has the single best
    chunk and nothing else: with sections weighed in, the section that is about the question wins."""
    dense_chunks = [hit("spot", 0.62), hit("lead", 0.60), hit("other", 0.40)]
    dense_sections = [hit("lead", 0.70, level=Level.SECTION), hit("spot", 0.45, level=Level.SECTION),
                      hit("other", 0.40, level=Level.SECTION)]
    chunks_only = fuse(dense_chunks, [], dense_sections, [], Weights(alpha=1.0, section_weight=0.0))
    both = fuse(dense_chunks, [], dense_sections, [], Weights(alpha=1.0, section_weight=0.5))
    assert chunks_only[0].key[0] == "spot" and both[0].key[0] == "lead"
    assert [h.chunk_id for h, _ in both[0].chunks] == ["lead-chunk-1-0"]  # the answer still cites chunks


def test_several_matching_chunks_earn_a_bounded_bonus() -> None:
    many = [hit("many", 0.60, idx=i) for i in range(6)]
    dense = [hit("one", 0.61), *many, hit("far", 0.1)]
    plain = fuse(dense, [], [], [], Weights(alpha=1.0, section_weight=0.0))
    bonus = fuse(dense, [], [], [], Weights(alpha=1.0, section_weight=0.0, bonus=0.1))
    assert plain[0].key[0] == "one" and bonus[0].key[0] == "many"
    assert bonus[0].score <= 1.0 + 0.1 + 1e-9 and len(bonus[0].chunks) == 6


def test_a_section_whose_work_matches_elsewhere_gains_a_bounded_share() -> None:
    """`faq-b` and `ref` score alike, but `faq-b`'s work (metadata `parent` "faq") also holds the best section:
    with parent evidence it ranks above `ref`, below its sibling, and `alone` (a work of its own) gains nothing."""
    dense = [hit("faq-a", 0.80, parent="faq"), hit("ref", 0.61), hit("faq-b", 0.60, parent="faq"),
             hit("alone", 0.40), hit("far", 0.2)]
    plain = fuse(dense, [], [], [], Weights(alpha=1.0, section_weight=0.0))
    parent = fuse(dense, [], [], [], Weights(alpha=1.0, section_weight=0.0, parent_weight=0.5))
    assert [s.key[0] for s in plain][:3] == ["faq-a", "ref", "faq-b"]
    assert [s.key[0] for s in parent][:3] == ["faq-a", "faq-b", "ref"]
    by_doc = {s.key[0]: s.score for s in parent}
    assert by_doc["faq-b"] == pytest.approx((0.60 - 0.2) / 0.6 + 0.5 * 1.0)
    assert by_doc["alone"] == pytest.approx({s.key[0]: s.score for s in plain}["alone"])


def test_a_shared_title_alone_makes_no_parent() -> None:
    """Documents that only share a title (every section of a page titled by the page, generic titles) are not
    one work: grouping them cost 0.05 nDCG@10 on the evaluation matrix (retrieval/fusion.py)."""
    dense = [hit("faq-a", 0.80, title="FAQ"), hit("ref", 0.61, title="Reference"), hit("faq-b", 0.60, title="FAQ")]
    plain = [s.key[0] for s in fuse(dense, [], [], [], Weights(alpha=1.0, section_weight=0.0))]
    grouped = [s.key[0] for s in fuse(dense, [], [], [], Weights(alpha=1.0, section_weight=0.0, parent_weight=0.5))]
    assert grouped == plain == ["faq-a", "ref", "faq-b"]


def test_the_senders_parent_groups_documents_and_the_document_groups_its_sections() -> None:
    """Sections of one document share it as parent; a `parent` in metadata groups documents whatever their
    titles, and keeps apart documents whose titles are the same."""
    same_doc = [hit("page", 0.9, section=0), hit("page", 0.6, idx=1, section=1), hit("other", 0.61)]
    ranked = fuse(same_doc, [], [], [], Weights(alpha=1.0, section_weight=0.0, parent_weight=0.5))
    assert [(s.key[0], s.key[2]) for s in ranked][:2] == [("page", 0), ("page", 1)]
    apart = [hit("a", 0.9, title="README", parent="repo-1"), hit("x", 0.61, title="Notes"),
             hit("b", 0.6, title="README", parent="repo-2"), hit("c", 0.5, title="Changelog", parent="repo-1")]
    ranked = [s.key[0] for s in fuse(apart, [], [], [], Weights(alpha=1.0, section_weight=0.0, parent_weight=0.5))]
    assert ranked.index("x") < ranked.index("b")  # same title, other parent: no lift
    assert ranked.index("c") < ranked.index("b")  # other title, same parent as the best: lifted


def test_strong_keyword_evidence_moves_the_weight_towards_bm25() -> None:
    """A terse query whose rare terms occur together scores high per term: BM25 weighs as much as the vectors;
    a question whose BM25 spreads over common words keeps the vectors' lead."""
    w = Weights(alpha=0.7, strong_keyword_alpha=0.5, strong_keyword_score=2.5)
    assert query_alpha(w, [hit("a", 12.0), hit("b", 3.0)], 4) == 0.5  # 3.0 points per term
    assert query_alpha(w, [hit("a", 12.0), hit("b", 3.0)], 6) == 0.7  # 2.0 points per term
    assert query_alpha(w, [], 4) == 0.7  # no keyword evidence at all
    assert query_alpha(replace(w, strong_keyword_alpha=0.7), [hit("a", 50.0)], 1) == 0.7  # fixed weights
    # the weight decides the ranking: the keyword side's favourite wins only with the strong weight
    dense = [hit("v", 0.9), hit("k", 0.6), hit("far", 0.1)]
    keyword = [hit("k", 12.0), hit("v", 7.0), hit("far", 1.0)]
    assert fuse(dense, keyword, [], [], chunks_only(alpha=0.7, exact_ratio=0))[0].key[0] == "v"
    assert fuse(dense, keyword, [], [], chunks_only(alpha=0.5, exact_ratio=0))[0].key[0] == "k"


def test_an_exact_match_stays_first_over_parent_evidence() -> None:
    dense = [hit("faq-a", 0.8, title="FAQ"), hit("faq-b", 0.79, title="FAQ"), hit("ticket", 0.3, title="T")]
    keyword = [hit("ticket", 10.0, title="T")]
    ranked = fuse(dense, keyword, [], [], Weights(alpha=0.75, section_weight=0.0, keyword_section_weight=0.0,
                                                  parent_weight=0.5))
    assert ranked[0].key[0] == "ticket"


def test_only_the_newest_version_of_a_document_counts() -> None:
    dense, keyword = newest_versions([hit("d", 0.9, version=1), hit("e", 0.5)], [hit("d", 3.0, version=2)])
    assert [(h.document_id, h.version) for h in dense] == [("e", 1)]
    assert [(h.document_id, h.version) for h in keyword] == [("d", 2)]


# ---- the Retriever on the real embedded index ----

DIM = 64


@pytest.fixture
def index(tmp_path: Path) -> LanceVectorIndex:
    emb = HashEmbedder(DIM)
    docs = {"kafka": ["Kafka partitions keep the order of messages.", "Consumers commit offsets after work."],
            "mongo": ["MongoDB stores BSON documents.", "Replica sets elect a primary."],
            "ticket": ["Release notes: fixed XK2B9Q7ZL0PA in the exporter."]}
    records = []
    for doc, texts in docs.items():
        vectors = emb.embed(texts)
        records += [ChunkRecord(chunk_uuid("t", doc, 1, i), "t", doc, 1, i, t, v, doc.title(), (), "", {}, 0)
                    for i, (t, v) in enumerate(zip(texts, vectors, strict=True))]
        lead = " ".join(texts)
        records.append(ChunkRecord(section_uuid("t", doc, 1, 0), "t", doc, 1, 0, lead, emb.embed([lead])[0],
                                   doc.title(), (), "", {}, 0, Level.SECTION))
    idx = LanceVectorIndex(tmp_path / "lance", DIM)
    assert idx.upsert(records) == []
    return idx


def test_the_retriever_cites_one_chunk_per_section(index: LanceVectorIndex) -> None:
    hits = Retriever(HashEmbedder(DIM), index).retrieve("t", "How do consumers commit offsets?", top_k=3)
    assert hits[0].document_id == "kafka" and hits[0].level is Level.CHUNK and hits[0].index == 1
    assert len({h.document_id for h in hits}) == len(hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_modes_use_one_retriever(index: LanceVectorIndex) -> None:
    keyword = Retriever(HashEmbedder(DIM), index, RetrievalConfig(mode=Mode.KEYWORD))
    assert [h.document_id for h in keyword.retrieve("t", "XK2B9Q7ZL0PA", top_k=3)] == ["ticket"]
    hybrid = Retriever(HashEmbedder(DIM), index)
    assert hybrid.retrieve("t", "XK2B9Q7ZL0PA", top_k=3)[0].document_id == "ticket"


def test_a_section_found_only_by_its_entry_is_cited_by_its_first_chunk(index: LanceVectorIndex) -> None:
    retriever = Retriever(HashEmbedder(DIM), index, RetrievalConfig(candidates=1))
    sections = retriever.rank("t", "BSON primary", HashEmbedder(DIM).embed(["BSON primary"])[0])
    sections[0].chunks.clear()  # as if no chunk of it were among the candidates
    hits = retriever._select("t", sections, 2)
    assert hits[0].level is Level.CHUNK and hits[0].index == 0 and hits[0].document_id == sections[0].key[0]


class FailingReranker:
    name = "failing"

    def rerank(self, question: str, hits: Sequence[SearchHit]) -> list[SearchHit]:
        raise RetrievalModelError("overloaded")


class ReversingReranker:
    name = "reversing"

    def rerank(self, question: str, hits: Sequence[SearchHit]) -> list[SearchHit]:
        return list(reversed(hits))


class Rewriter:
    name = "rewriter"

    def __init__(self, out: list[str] | Exception) -> None:
        self.out = out

    def rewrite(self, question: str) -> list[str]:
        if isinstance(self.out, Exception):
            raise self.out
        return self.out


def test_a_failing_reranker_leaves_the_first_stage_order(index: LanceVectorIndex) -> None:
    degraded: list[tuple[str, str]] = []
    plain = Retriever(HashEmbedder(DIM), index).retrieve("t", "Kafka order of messages", top_k=3)
    failing = Retriever(HashEmbedder(DIM), index, reranker=FailingReranker(),
                        on_degraded=lambda m, r: degraded.append((m, r)))
    assert failing.retrieve("t", "Kafka order of messages", top_k=3) == plain
    assert degraded == [("failing", "overloaded")]
    reversing = Retriever(HashEmbedder(DIM), index, RetrievalConfig(rerank_depth=3), reranker=ReversingReranker())
    assert reversing.retrieve("t", "Kafka order of messages", top_k=3) == list(reversed(plain))


def test_rewrites_are_searched_too_and_a_failing_rewriter_is_skipped(index: LanceVectorIndex) -> None:
    degraded: list[tuple[str, str]] = []
    plain = Retriever(HashEmbedder(DIM), index).retrieve("t", "zzz unknown words", top_k=1)
    helped = Retriever(HashEmbedder(DIM), index, rewriter=Rewriter(["replica primary election"]))
    assert helped.retrieve("t", "zzz unknown words", top_k=1)[0].document_id == "mongo"
    failing = Retriever(HashEmbedder(DIM), index, rewriter=Rewriter(RetrievalModelError("timeout")),
                        on_degraded=lambda m, r: degraded.append((m, r)))
    assert failing.retrieve("t", "zzz unknown words", top_k=1) == plain and degraded == [("rewriter", "timeout")]


def test_embedding_is_one_call_for_the_question_and_its_rewrites(index: LanceVectorIndex) -> None:
    emb = HashEmbedder(DIM)
    Retriever(emb, index, rewriter=Rewriter(["a", "b"])).retrieve("t", "q", top_k=1)
    assert emb.calls == [["q", "a", "b"]]


class FixedCandidates:
    """A VectorIndex that answers every search with the same candidates (for the Retriever's own logic)."""

    def __init__(self, dense: list[SearchHit], keyword: list[SearchHit]) -> None:
        self.found = Candidates(dense, keyword)

    def search(self, tenant: str, request: SearchRequest) -> Candidates:
        return self.found

    def section_chunks(self, tenant: str, sections: Sequence[tuple[str, int, int]], per_section: int
                       ) -> list[SearchHit]:
        return []


def test_the_retriever_weighs_each_query_by_its_keyword_evidence() -> None:
    """The same candidates, two queries: BM25's best (12.0) is 3 points per term of a 4-term query (strong:
    keyword evidence weighs as much as the vectors) and 2 points per term of a 6-term one (the vectors lead)."""
    index = FixedCandidates([hit("v", 0.9), hit("k", 0.6), hit("far", 0.1)],
                            [hit("k", 12.0), hit("v", 7.0), hit("far", 1.0)])
    retriever = Retriever(HashEmbedder(DIM), index, RetrievalConfig(sections=False))  # type: ignore[arg-type]
    assert retriever.retrieve("t", "penguin colony winter huddle", top_k=1)[0].document_id == "k"
    assert retriever.retrieve("t", "why do penguin colonies huddle during winter storms", top_k=1
                              )[0].document_id == "v"
