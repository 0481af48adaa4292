"""Fusion alternatives, offline: how else the same candidates could be combined, scored on a BEIR set.

    python bench/fusion_lab.py DIR [--json]

bench/retrieval.py measures what the pipeline runs; this measures what it could run instead, without
changing it. The corpus is indexed exactly as the pipeline does (bench/retrieval.py's `build_index`,
vectors from the same cache), then for every question it takes the candidates once (exact cosine over
every row: the dense side without ANN error; the LanceDB full-text index for BM25, 300 deep, both
levels) and ranks documents under each alternative:

- `reference`: retrieval.fusion.fuse with the pipeline's weights but without parent evidence (what every
  other alternative changes one thing of);
- parent evidence at several weights, through retrieval.fusion.fuse itself (the pipeline's default is one);
- score normalisation: z-score, divide by the best, min-max over the top N only, weighted reciprocal rank;
- evidence: a section's mean chunk vector beside its first chunk's; a chunk aggregate other than the best
  chunk (best + half the second; a soft maximum); dense pseudo-relevance feedback (the question vector
  moved towards the first ranking's top sections, then searched again);
- the keyword query without English question words (how, why, I, ...);
- candidate depth.

Each line: nDCG@10, the paired bootstrap interval of its difference to `reference` (a difference whose
interval holds 0 is within the set's noise), and how many questions' top 10 documents changed at all.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.retrieval import TENANT, build_index, question_embedder
from infra import wiring
from infra.settings import Settings
from kernel.ports import Level, SearchHit, SearchRequest
from ragbus.evaluate import load_set
from retrieval.evaluation import documents, paired_difference, score
from retrieval.fusion import Weights, confident_first, fuse

SectionKey = tuple[str, int, int]
Norm = Callable[[dict[SectionKey, float]], dict[SectionKey, float]]
#: Question words a keyword query can drop (NLTK's English stop words, the ones questions are made of).
QUESTION_WORDS = frozenset(
    "a about an and any are as at be been being but by can can't cannot could did didn't do does doesn't doing "
    "don't for from had has have having how i i'd i'll i'm i've if in into is isn't it it's its me my no not of "
    "on or should so some such than that the their them then there these they this those to was we were what "
    "when where which while who why will with would you your".split())


class Lab:
    def __init__(self, directory: Path, tmp: Path) -> None:
        settings = Settings()
        index, *_ = build_index(settings, directory, tmp)
        table = index._table.to_arrow()  # the benchmark reads LanceDB directly
        self.rows = table.select(["chunk_id", "document_id", "version", "idx", "level", "section", "title"]).to_pylist()
        self.vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
        self.eval_set = load_set(directory)
        self.qv = question_embedder(settings).embed([t for _, t in self.eval_set.queries])
        self.by_id = {r["chunk_id"]: i for i, r in enumerate(self.rows)}
        self.keyword = {qid: self._keyword(index, text) for qid, text in self.eval_set.queries}
        self.keyword_plain = {qid: self._keyword(index, _without_question_words(text))
                              for qid, text in self.eval_set.queries}
        # the reference: the pipeline's weights without parent evidence, which no alternative below adds
        self.weights = replace(wiring.retrieval_config(settings).weights, parent_weight=0.0)
        self.parent_weight = settings.retrieval.parent_weight
        self.depth = 2 * settings.retrieval.candidates  # both levels in one list, as the adapter asks
        groups: dict[SectionKey, list[int]] = defaultdict(list)
        for i, r in enumerate(self.rows):
            groups[(r["document_id"], r["version"], r["section"])].append(i)
        self.section_mean = {}
        for key, members in groups.items():
            chunks = [i for i in members if self.rows[i]["level"] == Level.CHUNK.value]
            if chunks:
                mean = self.vectors[chunks].mean(axis=0)
                self.section_mean[key] = mean / np.linalg.norm(mean)
        self.first_chunk = {key: self.vectors[i] for key, members in groups.items() for i in members
                            if self.rows[i]["level"] == Level.SECTION.value}

    def _keyword(self, index: Any, text: str) -> list[tuple[str, float]]:
        found = index.search(TENANT, SearchRequest(text=text, vector=self.vectors[0], candidates=150,
                                                   levels=(Level.CHUNK, Level.SECTION), heading_weight=0.0,
                                                   dense=False))
        return [(h.chunk_id, h.score) for h in found.keyword]

    def hit(self, i: int, score: float) -> SearchHit:
        r = self.rows[i]
        return SearchHit(r["chunk_id"], r["document_id"], r["version"], r["idx"], "", score, r["title"], (), {},
                         r["section"], Level(r["level"]))

    def dense(self, q: np.ndarray[Any, Any], depth: int) -> tuple[list[SearchHit], list[SearchHit]]:
        scores = self.vectors @ q
        top = np.argpartition(-scores, depth)[:depth]
        hits = [self.hit(int(i), float(scores[i])) for i in top[np.argsort(-scores[top])]]
        return _levels(hits)

    def keywords(self, qid: str, depth: int, plain: bool = False) -> tuple[list[SearchHit], list[SearchHit]]:
        found = (self.keyword_plain if plain else self.keyword)[qid][:depth]
        return _levels([self.hit(self.by_id[c], s) for c, s in found])

    def run(self, rank: Callable[[str, np.ndarray[Any, Any]], list[str]]) -> tuple[Any, dict[str, list[str]]]:
        rankings = {qid: documents(rank(qid, q)) for (qid, _), q in zip(self.eval_set.queries, self.qv, strict=True)}
        return score(rankings, {qid: self.eval_set.judgements[qid] for qid, _ in self.eval_set.queries}), rankings


def _levels(hits: list[SearchHit]) -> tuple[list[SearchHit], list[SearchHit]]:
    return [h for h in hits if h.level is Level.CHUNK], [h for h in hits if h.level is Level.SECTION]


def _without_question_words(text: str) -> str:
    kept = [w for w in re.findall(r"[A-Za-z0-9_']+", text) if w.lower() not in QUESTION_WORDS]
    return " ".join(kept) or text


def minmax(d: dict[SectionKey, float]) -> dict[SectionKey, float]:
    if not d:
        return {}
    lo, hi = min(d.values()), max(d.values())
    return {k: (v - lo) / (hi - lo) if hi > lo else 1.0 for k, v in d.items()}


def zscore(d: dict[SectionKey, float]) -> dict[SectionKey, float]:
    if not d:
        return {}
    mean, sd = statistics.mean(d.values()), statistics.pstdev(d.values()) or 1.0
    return {k: (v - mean) / sd for k, v in d.items()}


def by_best(d: dict[SectionKey, float]) -> dict[SectionKey, float]:
    hi = max(d.values(), default=0.0)
    return {k: v / hi if hi > 0 else 0.0 for k, v in d.items()}


def minmax_top(n: int) -> Norm:
    def norm(d: dict[SectionKey, float]) -> dict[SectionKey, float]:
        if not d:
            return {}
        ordered = sorted(d.values(), reverse=True)
        hi, lo = ordered[0], ordered[min(n, len(ordered)) - 1]
        return {k: max(0.0, (v - lo) / (hi - lo)) if hi > lo else 1.0 for k, v in d.items()}
    return norm


def reciprocal_rank(k: int) -> Norm:
    def norm(d: dict[SectionKey, float]) -> dict[SectionKey, float]:
        return {key: 1.0 / (k + i) for i, key in enumerate(sorted(d, key=lambda x: -d[x]))}
    return norm


def aggregate(hits: list[SearchHit], how: str) -> dict[SectionKey, float]:
    groups: dict[SectionKey, list[float]] = defaultdict(list)
    for h in hits:
        groups[h.section_key].append(h.score)
    out = {}
    for key, scores in groups.items():
        s = sorted(scores, reverse=True)
        if how == "top2":
            out[key] = s[0] + 0.5 * (s[1] if len(s) > 1 else s[0] - 0.1)
        elif how == "softmax":
            out[key] = s[0] + 0.02 * math.log(sum(math.exp((x - s[0]) / 0.02) for x in s))
        else:
            out[key] = s[0]
    return out


def fused(lab: Lab, *, alpha: float | None = None, norm: Norm = minmax, depth: int | None = None,
          mean_weight: float = 0.0, chunks: str = "max", prf: tuple[float, int] | None = None,
          plain_keywords: bool = False) -> Callable[[str, np.ndarray[Any, Any]], list[str]]:
    w = lab.weights if alpha is None else Weights(alpha=alpha, section_weight=lab.weights.section_weight,
                                                   keyword_section_weight=lab.weights.keyword_section_weight,
                                                   exact_ratio=lab.weights.exact_ratio)
    n = depth or lab.depth

    def rank(qid: str, q: np.ndarray[Any, Any]) -> list[str]:
        dc, ds = lab.dense(q, n)
        kc, ks = lab.keywords(qid, n, plain_keywords)
        if prf is not None:
            beta, k = prf
            first = fuse(dc, kc, ds, ks, w)
            moved = q + beta * np.mean([lab.first_chunk[s.key] for s in first[:k]], axis=0)
            q = moved / np.linalg.norm(moved)
            dc, ds = lab.dense(q, n)
        a, sw, kw = w.alpha, w.section_weight, w.keyword_section_weight
        parts = [(a * (1 - sw), norm(aggregate(dc, chunks))), (a * sw, norm(aggregate(ds, "max"))),
                 ((1 - a) * (1 - kw), norm(aggregate(kc, "max"))), ((1 - a) * kw, norm(aggregate(ks, "max")))]
        if mean_weight:
            candidates = {h.section_key for h in dc + ds + kc + ks if h.section_key in lab.section_mean}
            parts.append((a * mean_weight, norm({key: float(lab.section_mean[key] @ q) for key in candidates})))
        scores: dict[SectionKey, float] = defaultdict(float)
        for weight, evidence in parts:
            for key, value in evidence.items():
                scores[key] += weight * value
        ranked = sorted(scores, key=lambda key: (-scores[key], key))
        exact = confident_first(ks, w.exact_ratio) or confident_first(kc, w.exact_ratio)
        if exact in scores:
            ranked.remove(exact)
            ranked.insert(0, exact)
        return [key[0] for key in ranked]

    return rank


def alternatives(lab: Lab) -> dict[str, Callable[[str, np.ndarray[Any, Any]], list[str]]]:
    def reference(qid: str, q: np.ndarray[Any, Any]) -> list[str]:
        dc, ds = lab.dense(q, lab.depth)
        kc, ks = lab.keywords(qid, lab.depth)
        return [s.key[0] for s in fuse(dc, kc, ds, ks, lab.weights)]

    out: dict[str, Callable[[str, np.ndarray[Any, Any]], list[str]]] = {"reference": reference}
    for a in (0.6, 0.7, 0.8):
        out[f"z-score, alpha {a}"] = fused(lab, alpha=a, norm=zscore)
        out[f"divide by the best, alpha {a}"] = fused(lab, alpha=a, norm=by_best)
    for n in (10, 20, 50):
        out[f"min-max over the top {n}"] = fused(lab, norm=minmax_top(n))
    for k in (5, 20, 60):
        out[f"weighted reciprocal rank, k {k}, alpha 0.6"] = fused(lab, alpha=0.6, norm=reciprocal_rank(k))
    for mw in (0.25, 0.5):
        out[f"section mean vector, weight {mw}"] = fused(lab, mean_weight=mw)
    out["chunks: best + half the second"] = fused(lab, chunks="top2")
    out["chunks: soft maximum"] = fused(lab, chunks="softmax")
    for beta, k in ((0.3, 1), (0.3, 3), (0.6, 3)):
        out[f"dense pseudo-relevance feedback, beta {beta}, top {k}"] = fused(lab, prf=(beta, k))
    out["keyword query without question words"] = fused(lab, plain_keywords=True)
    out["depth 300 (one list for both levels)"] = fused(lab, depth=300)
    for weight in (0.2, 0.3, 0.5, 0.7, 0.9):
        out[f"parent evidence {weight}" + (" (the pipeline's default)" if weight == lab.parent_weight else "")] = \
            with_parents(lab, weight)
    out[f"parent evidence {lab.parent_weight}, titles shuffled among documents"] = \
        with_parents(lab, lab.parent_weight, shuffled=True)
    return out


def with_parents(lab: Lab, weight: float, shuffled: bool = False) -> Callable[[str, np.ndarray[Any, Any]], list[str]]:
    """retrieval.fusion.fuse itself with parent evidence at `weight` (hits carry their titles). `shuffled`:
    the titles permuted among documents (same group sizes, unrelated members), the harm parent evidence
    does when shared titles say nothing about what belongs together."""
    w = replace(lab.weights, parent_weight=weight)
    titles = {r["document_id"]: r["title"] for r in lab.rows}
    docs = sorted(titles)
    permuted = [titles[d] for d in docs]
    np.random.default_rng(7).shuffle(permuted)
    other = dict(zip(docs, permuted, strict=True))

    def retitle(hits: list[SearchHit]) -> list[SearchHit]:
        return [replace(h, title=other[h.document_id]) for h in hits] if shuffled else hits

    def rank(qid: str, q: np.ndarray[Any, Any]) -> list[str]:
        dc, ds = lab.dense(q, lab.depth)
        kc, ks = lab.keywords(qid, lab.depth)
        return [s.key[0] for s in fuse(retitle(dc), retitle(kc), retitle(ds), retitle(ks), w)]

    return rank


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("directory", type=Path)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ragbus-fusion-lab-") as tmp:
        lab = Lab(args.directory, Path(tmp))
        results = {name: lab.run(rank) for name, rank in alternatives(lab).items()}
    base, base_rankings = results["reference"]
    report = {}
    for name, (scores, rankings) in results.items():
        d, lo, hi = paired_difference(base.ndcg10, scores.ndcg10)
        # how many questions' top 10 differ at all: a difference of +0.000 can be "no effect" or "no change"
        changed = sum(rankings[q][:10] != base_rankings[q][:10] for q in base_rankings)
        report[name] = scores.means() | {"vs_reference": [d, lo, hi], "top10_changed": changed}
    if args.json:
        print(json.dumps({"set": str(args.directory), "queries": len(base.ndcg10), "alternatives": report}))
        return
    print("| alternative | nDCG@10 | vs reference (95% CI) | recall@10 | MRR@10 | questions whose top 10 changed |")
    print("|---|---|---|---|---|---|")
    for name, r in report.items():
        d, lo, hi = r["vs_reference"]
        print(f"| {name} | {r['ndcg@10']:.3f} | {d:+.3f} ({lo:+.3f}, {hi:+.3f}) | {r['recall@10']:.3f} | "
              f"{r['mrr@10']:.3f} | {r['top10_changed']} |")


if __name__ == "__main__":
    main()
