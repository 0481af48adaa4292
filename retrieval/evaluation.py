"""Retrieval metrics on BEIR-style judgements (pure functions): nDCG@k, recall@k, MRR@k, and a bootstrap
over queries for the noise of a mean.

A ranking is a list of document ids, best first (chunk hits folded to their documents, first occurrence
wins); judgements map document ids to graded relevance (> 0 is relevant).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


def ndcg(ranked: Sequence[str], relevant: Mapping[str, float], k: int = 10) -> float:
    dcg = sum(relevant.get(d, 0.0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted((g for g in relevant.values() if g > 0),
                                                                  reverse=True)[:k]))
    return dcg / ideal if ideal else 0.0


def recall(ranked: Sequence[str], relevant: Mapping[str, float], k: int) -> float:
    wanted = {d for d, g in relevant.items() if g > 0}
    return len(wanted & set(ranked[:k])) / len(wanted) if wanted else 0.0


def mrr(ranked: Sequence[str], relevant: Mapping[str, float], k: int = 10) -> float:
    return next((1.0 / (i + 1) for i, d in enumerate(ranked[:k]) if relevant.get(d, 0.0) > 0), 0.0)


def documents(ranked_ids: Sequence[str]) -> list[str]:
    """Fold a ranking of chunks' document ids to documents: the first occurrence of each wins."""
    return list(dict.fromkeys(ranked_ids))


@dataclass(frozen=True)
class Scores:
    ndcg10: list[float]
    recall10: list[float]
    recall100: list[float]
    mrr10: list[float]

    def means(self) -> dict[str, float]:
        return {name: round(sum(v) / len(v), 4) if v else 0.0 for name, v in
                (("ndcg@10", self.ndcg10), ("recall@10", self.recall10), ("recall@100", self.recall100),
                 ("mrr@10", self.mrr10))}


def score(rankings: Mapping[str, Sequence[str]], judgements: Mapping[str, Mapping[str, float]]) -> Scores:
    """Per-query metrics for every judged query (a judged query without a ranking scores 0)."""
    out = Scores([], [], [], [])
    for qid, relevant in sorted(judgements.items()):
        ranked = rankings.get(qid, [])
        out.ndcg10.append(ndcg(ranked, relevant, 10))
        out.recall10.append(recall(ranked, relevant, 10))
        out.recall100.append(recall(ranked, relevant, 100))
        out.mrr10.append(mrr(ranked, relevant, 10))
    return out


def bootstrap_interval(values: Sequence[float], *, rounds: int = 2000, seed: int = 12,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, resampling queries: the run-to-run noise of a set's mean."""
    if not values:
        return (0.0, 0.0)
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(rounds))
    lo = means[int((1 - level) / 2 * rounds)]
    hi = means[min(rounds - 1, int((1 + level) / 2 * rounds))]
    return (round(lo, 4), round(hi, 4))


def paired_difference(a: Sequence[float], b: Sequence[float], *, rounds: int = 2000,
                      seed: int = 12) -> tuple[float, float, float]:
    """Mean of b - a over the same queries and its bootstrap 95% interval: a gain whose interval holds 0 is
    within the noise of the set."""
    if len(a) != len(b):
        raise ValueError("paired scores need the same queries")
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    lo, hi = bootstrap_interval(diffs, rounds=rounds, seed=seed)
    return (round(sum(diffs) / len(diffs), 4) if diffs else 0.0, lo, hi)
