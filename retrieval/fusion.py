"""Hybrid fusion shared by adapters that fuse on the client (Weaviate fuses on the server the same way).

Relative score fusion (Weaviate's default `relativeScoreFusion`): each retriever's scores are
min-max normalised to [0, 1] within the query, then combined as alpha * vector + (1 - alpha) * bm25.
Reciprocal-rank fusion was measured worse than dense retrieval alone on our evaluation data
(README of shared/data: 0.581 vs 0.691 nDCG@10), because it throws the score gaps away.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def _normalise(scores: Sequence[float]) -> list[float]:
    if not scores:
        return []
    lo, hi = min(scores), max(scores)
    if hi - lo < 1e-12:
        return [1.0 for _ in scores]
    return [(s - lo) / (hi - lo) for s in scores]


def relative_score_fusion(vector: Sequence[tuple[str, float, T]], keyword: Sequence[tuple[str, float, T]],
                          alpha: float, limit: int) -> list[tuple[T, float]]:
    """Fuse two ranked lists of (id, raw score, item), higher scores better; returns (item, score)."""
    fused: dict[str, float] = {}
    items: dict[str, T] = {}
    for weight, hits in ((alpha, vector), (1.0 - alpha, keyword)):
        for (key, _, item), norm in zip(hits, _normalise([h[1] for h in hits]), strict=True):
            fused[key] = fused.get(key, 0.0) + weight * norm
            items.setdefault(key, item)
    ranked = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return [(items[key], score) for key, score in ranked]
