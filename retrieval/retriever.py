"""Question -> ranked evidence. The one retrieval path of the pipeline and of every benchmark.

1. The question (and, with a rewriter, its rewrites) is embedded and searched in the query's tenant:
   each retriever (dense, keyword) takes `candidates` entries at each level (chunks; section entries).
   `candidates` is one setting used identically by the answerer and the benchmarks.
2. Evidence is fused into a ranking of sections (retrieval/fusion.py): both retrievers, both levels, a
   bounded bonus for several matching chunks, and exact keyword matches kept on top. Only each
   document's newest version counts (an update leaves old entries searchable until it is complete).
3. Each ranked section contributes its best chunks (`per_section`; a section found only by its section
   entry contributes its first chunks): the answer cites chunks, from as many sections as it can.
Every step reads only what the asker may read: `visible` (the asker's visibility tokens, kernel/permissions.py)
goes into every index query, where the index filters before it ranks; the reranker and the citations see only
what came back.
4. An optional reranker reorders the first `rerank_depth` hits; when it fails, the first-stage order
   stands (counted, never hidden: `ragbus_retrieval_degraded_total`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from kernel.errors import RetrievalModelError
from kernel.permissions import PUBLIC_ONLY
from kernel.ports import (
    Candidates,
    Embedder,
    Level,
    Metadata,
    QueryRewriter,
    Reranker,
    SearchHit,
    SearchRequest,
    Vector,
    VectorIndex,
)

from .fusion import RankedSection, SectionKey, Weights, fuse, newest_versions, query_alpha
from .keywords import tokens


class Mode(StrEnum):
    HYBRID = "hybrid"
    DENSE = "dense"
    KEYWORD = "keyword"


@dataclass(frozen=True)
class RetrievalConfig:
    candidates: int = 100
    weights: Weights = field(default_factory=Weights)
    mode: Mode = Mode.HYBRID
    #: Search section entries too (the level above the chunk); False ranks sections by their chunks only.
    sections: bool = True
    heading_weight: float = 0.02
    per_section: int = 1
    rerank_depth: int = 20


#: Called with the name of a retrieval model that failed and the reason.
OnDegraded = Callable[[str, str], None]


class Retriever:
    def __init__(self, embedder: Embedder, index: VectorIndex, config: RetrievalConfig | None = None, *,
                 reranker: Reranker | None = None, rewriter: QueryRewriter | None = None,
                 on_degraded: OnDegraded | None = None) -> None:
        self._embedder = embedder
        self._index = index
        self.config = config or RetrievalConfig()
        self._reranker = reranker
        self._rewriter = rewriter
        self._on_degraded = on_degraded or (lambda _model, _reason: None)

    def retrieve(self, tenant: str, question: str, top_k: int, filters: Metadata | None = None,
                 visible: tuple[str, ...] = PUBLIC_ONLY, also: Sequence[str] = ()) -> list[SearchHit]:
        """`also`: further queries searched with the question and fused with it (as a rewriter's are)."""
        queries = [question, *[a for a in also if a.strip() and a != question], *self._rewrites(question)]
        vectors = self._embedder.embed(queries)
        rankings = [self.rank(tenant, q, v, filters, visible) for q, v in zip(queries, vectors, strict=True)]
        sections = rankings[0] if len(rankings) == 1 else merge(rankings)
        depth = max(top_k, self.config.rerank_depth if self._reranker else 0)
        hits = self._select(tenant, sections, depth, visible)
        if self._reranker is not None and len(hits) > 1:
            try:
                hits = self._reranker.rerank(question, hits[:depth])
            except RetrievalModelError as exc:
                self._on_degraded(self._reranker.name, str(exc))
        return hits[:top_k]

    def candidates(self, tenant: str, text: str, vector: Vector, filters: Metadata | None = None,
                   visible: tuple[str, ...] = PUBLIC_ONLY) -> Candidates:
        """Both levels and both retrievers in one request: the index runs the dense and the keyword query at
        once (LanceDB inside one call, Weaviate on two threads), so neither the section level nor the second
        retriever costs an extra round trip."""
        cfg = self.config
        levels = (Level.CHUNK, Level.SECTION) if cfg.sections else (Level.CHUNK,)
        return self._index.search(tenant, SearchRequest(
            text=text, vector=vector, candidates=cfg.candidates, levels=levels, filters=filters,
            heading_weight=cfg.heading_weight, dense=cfg.mode is not Mode.KEYWORD, keyword=cfg.mode is not Mode.DENSE,
            visible=visible))

    def rank(self, tenant: str, text: str, vector: Vector, filters: Metadata | None = None,
             visible: tuple[str, ...] = PUBLIC_ONLY) -> list[RankedSection]:
        """Sections best first for one query text, each with its candidate chunks."""
        found = self.candidates(tenant, text, vector, filters, visible)

        def level(hits: list[SearchHit], lv: Level) -> list[SearchHit]:
            return [h for h in hits if h.level is lv]

        dc, kc, ds, ks = newest_versions(level(found.dense, Level.CHUNK), level(found.keyword, Level.CHUNK),
                                         level(found.dense, Level.SECTION), level(found.keyword, Level.SECTION))
        alpha = {Mode.DENSE: 1.0, Mode.KEYWORD: 0.0}.get(self.config.mode)
        if alpha is None:  # hybrid: the vectors' weight depends on how strong the keyword evidence is
            alpha = query_alpha(self.config.weights, kc + ks, len(set(tokens(text))))
        weights = replace(self.config.weights, alpha=alpha)
        if not self.config.sections:
            weights = replace(weights, section_weight=0.0, keyword_section_weight=0.0)
        return fuse(dc, kc, ds, ks, weights)

    def _select(self, tenant: str, sections: list[RankedSection], n: int,
                visible: tuple[str, ...] = PUBLIC_ONLY) -> list[SearchHit]:
        per = self.config.per_section
        wanted = sections[:n]
        bare = [s.key for s in wanted if not s.chunks]
        leads: dict[SectionKey, list[SearchHit]] = {}
        for h in self._index.section_chunks(tenant, bare, per, visible) if bare else []:
            leads.setdefault(h.section_key, []).append(h)
        hits: list[SearchHit] = []
        for s in wanted:
            chosen = [h for h, _ in s.chunks[:per]] or leads.get(s.key, [])[:per]
            hits += [replace(h, score=round(s.score, 6)) for h in chosen]
        return hits

    def _rewrites(self, question: str) -> list[str]:
        if self._rewriter is None:
            return []
        try:
            return [q for q in self._rewriter.rewrite(question) if q.strip() and q != question]
        except RetrievalModelError as exc:
            self._on_degraded(self._rewriter.name, str(exc))
            return []


def merge(rankings: Sequence[list[RankedSection]]) -> list[RankedSection]:
    """Several queries' rankings as one: a section's score is its mean over the queries (0 where a query
    did not find it), its chunks the union, best first."""
    merged: dict[SectionKey, RankedSection] = {}
    for ranking in rankings:
        for s in ranking:
            m = merged.setdefault(s.key, RankedSection(s.key, 0.0))
            m.score += s.score / len(rankings)
            seen = {h.chunk_id for h, _ in m.chunks}
            m.chunks += [(h, sc) for h, sc in s.chunks if h.chunk_id not in seen]
    for m in merged.values():
        m.chunks.sort(key=lambda hs: -hs[1])
    return sorted(merged.values(), key=lambda s: (-s.score, s.key))
