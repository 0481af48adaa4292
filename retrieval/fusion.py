"""Evidence from two retrievers and two levels, fused into one ranking of sections (pure functions).

Each retriever (dense: cosine; keyword: BM25) returns its candidates at two levels: chunks, and section
entries (a section's title, heading path and lead). Per level and retriever, a section's evidence is its
best entry's score (for chunks: its best chunk), min-max normalised to [0, 1] within the candidate list
(relative score fusion, as Weaviate's `relativeScoreFusion`; a section not in a list gets 0). Then

    score = a * ((1 - sw) * dense_chunks + sw * dense_sections)
          + (1 - a) * ((1 - kw) * keyword_chunks + kw * keyword_sections)
          + bonus * min(1, (matching chunks - 1) / 3)

where `matching chunks` counts the section's chunks in the dense list scoring at least half of the best
(several good chunks are evidence a section is about the question, bounded so it never dominates).

The weight `a` of the vectors depends on the query (`query_alpha`): it is `strong_keyword_alpha` (0.5)
when the keyword side's best match scores at least `strong_keyword_score` (2.5) BM25 points per distinct
analysed query term, else `alpha` (0.7). A high score per term means the query's terms are rare in the
collection and occur together in one place: a terse, specific query (a man page's one-line description, a
package summary), where BM25 is as good a judge as the vectors. A natural-language question spreads its
BM25 over common words and scores low per term, and the vectors lead. Fixed weights tuned on questions lost
to BM25 alone on terse queries over unstructured text; fixed weights tuned on those lost on questions
(bench/RESULTS.md, "Issue 22": the rule was chosen by its worst row over the evaluation matrix).

Evidence above the section (parent-document retrieval, off by default: `parent_weight` 0): a section's
parent is its document's `metadata["parent"]` when the sender set one, else its document. A section then
gains

    parent_weight * (the best fused score, as above, of another candidate section with the same parent)

so a section whose work also matches the question elsewhere ranks above an equally good section of a work
that matches nowhere else. With `parent_weight` < 1 the sections of one parent keep their order among
themselves (a - b > 0 implies a + w*b > b + w*a). Titles are never taken as parents: grouping by a shared
title gained +0.046 nDCG@10 on pydocs-faq-dev, where only the FAQ pages' sections share one, and cost 0.053
when every page's sections share their page's title (bench/RESULTS.md, "Issue 22"), and the same holds for
an explicit parent naming every section's page: whether grouping helps depends on which works a corpus
groups, so it is the operator's choice, not a default. Exact matches are applied after it.

Exact matches survive fusion: when the keyword retriever ranks one section first by a wide margin (its
score at least `exact_ratio` times the runner-up's, or no runner-up at all), that section is put first.
That is the shape of an identifier query (an error code, a function or package name) that occurs in one
place: min-max fusion alone would cap such a hit at 1 - alpha, below dense neighbours that share nothing
with the query. Reciprocal-rank fusion is not used: it throws the score gaps away, and measured worse
than dense retrieval alone on our data (bench/RESULTS.md).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from kernel.ports import SearchHit

SectionKey = tuple[str, int, int]


@dataclass(frozen=True)
class Weights:
    alpha: float = 0.7
    section_weight: float = 0.85
    keyword_section_weight: float = 1.0
    bonus: float = 0.0
    exact_ratio: float = 2.0
    parent_weight: float = 0.0
    #: The vectors' weight for a query whose keyword evidence is strong (see `query_alpha`).
    strong_keyword_alpha: float = 0.5
    #: BM25 points per distinct analysed query term from which the keyword evidence counts as strong.
    strong_keyword_score: float = 2.5


@dataclass
class RankedSection:
    key: SectionKey
    score: float
    chunks: list[tuple[SearchHit, float]] = field(default_factory=list)


def normalise(hits: Sequence[SearchHit]) -> dict[str, float]:
    """Min-max normalised score per entry id (all equal: all 1)."""
    if not hits:
        return {}
    lo, hi = min(h.score for h in hits), max(h.score for h in hits)
    return {h.chunk_id: (h.score - lo) / (hi - lo) if hi - lo > 1e-12 else 1.0 for h in hits}


def best_per_section(hits: Sequence[SearchHit]) -> dict[SectionKey, float]:
    norm = normalise(hits)
    out: dict[SectionKey, float] = {}
    for h in hits:
        out[h.section_key] = max(out.get(h.section_key, 0.0), norm[h.chunk_id])
    return out


def confident_first(hits: Sequence[SearchHit], ratio: float) -> SectionKey | None:
    """The section the list ranks first by a margin of `ratio` over the next section, if any."""
    if ratio <= 0 or not hits:
        return None
    best: dict[SectionKey, float] = {}
    for h in hits:
        best[h.section_key] = max(best.get(h.section_key, float("-inf")), h.score)
    ordered = sorted(best.items(), key=lambda kv: -kv[1])
    top = ordered[0]
    if top[1] <= 0:
        return None
    if len(ordered) == 1 or ordered[1][1] <= 0 or top[1] >= ratio * ordered[1][1]:
        return top[0]
    return None


def query_alpha(weights: Weights, keyword_hits: Sequence[SearchHit], query_terms: int) -> float:
    """The vectors' weight for one query: `strong_keyword_alpha` when the keyword side's best raw score per
    query term reaches `strong_keyword_score` (the query's terms are rare and found together), else `alpha`."""
    if query_terms <= 0 or not keyword_hits:
        return weights.alpha
    best = max(h.score for h in keyword_hits)
    return weights.strong_keyword_alpha if best / query_terms >= weights.strong_keyword_score else weights.alpha


def parent_of(hit: SearchHit) -> str:
    """The work a hit's section is part of: the sender's `parent`, else its document (never its title)."""
    parent = hit.metadata.get("parent") if hit.metadata else None
    return f"p:{parent}" if parent not in (None, "") else f"d:{hit.document_id}"


def parent_evidence(scores: dict[SectionKey, float], parents: dict[SectionKey, str]) -> dict[SectionKey, float]:
    """Per section that shares its parent with another candidate, the best score among those others."""
    members: dict[str, list[tuple[float, SectionKey]]] = {}
    for key, score in scores.items():
        members.setdefault(parents[key], []).append((score, key))
    out: dict[SectionKey, float] = {}
    for group in members.values():
        if len(group) > 1:
            (first, best), (second, _) = heapq.nlargest(2, group)
            for _, key in group:
                out[key] = second if key == best else first
    return out


def _several(dense_chunks: Sequence[SearchHit]) -> dict[SectionKey, float]:
    norm = normalise(dense_chunks)
    counts: dict[SectionKey, int] = {}
    for h in dense_chunks:
        if norm[h.chunk_id] >= 0.5:
            counts[h.section_key] = counts.get(h.section_key, 0) + 1
    return {k: min(1.0, (n - 1) / 3) for k, n in counts.items() if n > 1}


def fuse(dense_chunks: Sequence[SearchHit], keyword_chunks: Sequence[SearchHit],
         dense_sections: Sequence[SearchHit], keyword_sections: Sequence[SearchHit],
         weights: Weights) -> list[RankedSection]:
    """Sections best first, each with its candidate chunks (best first by their own fused score)."""
    a, sw, kw = weights.alpha, weights.section_weight, weights.keyword_section_weight
    parts = [(a * (1 - sw), best_per_section(dense_chunks)), (a * sw, best_per_section(dense_sections)),
             ((1 - a) * (1 - kw), best_per_section(keyword_chunks)),
             ((1 - a) * kw, best_per_section(keyword_sections))]
    if weights.bonus:
        parts.append((weights.bonus, _several(dense_chunks)))
    scores: dict[SectionKey, float] = {}
    for weight, evidence in parts:
        if weight:
            for key, value in evidence.items():
                scores[key] = scores.get(key, 0.0) + weight * value
    if weights.parent_weight:
        parents = {h.section_key: parent_of(h) for h in
                   _all((dense_chunks, keyword_chunks, dense_sections, keyword_sections))}
        for key, value in parent_evidence(scores, parents).items():
            scores[key] += weights.parent_weight * value
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    exact = None
    if a < 1:
        exact = (confident_first(keyword_sections, weights.exact_ratio)
                 or confident_first(keyword_chunks, weights.exact_ratio))
    if exact is not None and exact in scores:
        ranked.sort(key=lambda kv: kv[0] != exact)  # stable: only the exact match moves, to the top
    sections = {key: RankedSection(key, score) for key, score in ranked}
    for hit, score in fuse_chunks(dense_chunks, keyword_chunks, a):
        if hit.section_key in sections:
            sections[hit.section_key].chunks.append((hit, score))
    return list(sections.values())


def fuse_chunks(dense: Sequence[SearchHit], keyword: Sequence[SearchHit], alpha: float
                ) -> list[tuple[SearchHit, float]]:
    """Chunk-level relative score fusion: alpha * dense + (1 - alpha) * keyword, best first."""
    fused: dict[str, float] = {}
    items: dict[str, SearchHit] = {}
    for weight, hits in ((alpha, dense), (1 - alpha, keyword)):
        norm = normalise(hits)
        for h in hits:
            fused[h.chunk_id] = fused.get(h.chunk_id, 0.0) + weight * norm[h.chunk_id]
            items.setdefault(h.chunk_id, h)
    return [(items[k], s) for k, s in sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))]


def newest_versions(*lists: Sequence[SearchHit]) -> list[list[SearchHit]]:
    """Each list without entries of a document version older than the newest version any list holds (an
    update leaves the old entries searchable until the new version is complete)."""
    newest: dict[str, int] = {}
    for h in _all(lists):
        newest[h.document_id] = max(newest.get(h.document_id, -1), h.version)
    return [[h for h in hits if h.version == newest[h.document_id]] for hits in lists]


def _all(lists: Iterable[Sequence[SearchHit]]) -> Iterable[SearchHit]:
    for hits in lists:
        yield from hits
