"""Question -> ranked evidence: embed the question, take the `candidates` best chunks of each retriever
(BM25 and vector) inside the query's tenant, fuse them, and keep each document's newest version only
(an update leaves the old chunks searchable until the new version is complete)."""

from __future__ import annotations

from collections.abc import Sequence

from kernel.ports import Embedder, Metadata, SearchHit, VectorIndex


def newest_versions_only(hits: Sequence[SearchHit]) -> list[SearchHit]:
    newest: dict[str, int] = {}
    for h in hits:
        newest[h.document_id] = max(newest.get(h.document_id, -1), h.version)
    return [h for h in hits if h.version == newest[h.document_id]]


class Retriever:
    def __init__(self, embedder: Embedder, index: VectorIndex, *, alpha: float, candidates: int) -> None:
        self._embedder = embedder
        self._index = index
        self.alpha = alpha
        self.candidates = candidates

    def retrieve(self, tenant: str, question: str, top_k: int,
                 filters: Metadata | None = None) -> list[SearchHit]:
        vector = self._embedder.embed([question])[0]
        hits = self._index.hybrid_search(tenant, question, vector, limit=top_k * 2, alpha=self.alpha,
                                         candidates=max(self.candidates, top_k * 2), filters=filters)
        return newest_versions_only(hits)[:top_k]
