"""Fusion alternatives, offline, over the evaluation matrix: how else the same candidates could be ranked.

    python bench/fusion_lab.py DIR [DIR ...] [--matrix FILE] [--only NAME,...] [--json OUT]

bench/retrieval.py measures what the pipeline runs; this measures what it could run instead, without
changing it, fast enough to try many alternatives on every row of the matrix (bench/sets.py). Each set is
indexed once exactly as the pipeline does (bench/retrieval.py's `build_index`, vectors from the same
cache) into bench/out/lab/<set>/, kept for the next run. For every question the candidates are taken once:
exact cosine over every row (the dense side without ANN error) and BM25 from the LanceDB full-text indexes
(the text field, and the title + heading path field apart, both levels, `DEPTH` deep); every alternative
ranks documents from them.

`reference` is retrieval.fusion.fuse with the configured weights (the shipped default). Each alternative
is one function of a question's candidates; the table gives, per set, nDCG@10 and the paired bootstrap
interval of the difference to `reference`, with `*` where an alternative is below that row's best beyond
the paired noise, and per alternative its worst row. A default is chosen by its worst row.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.retrieval import TENANT, kept_index, print_matrix, question_embedder, whole_section_dense
from infra.settings import Settings
from infra.stores.lance import LanceVectorIndex
from kernel.ports import Level, SearchHit, SearchRequest
from ragbus import wiring
from ragbus.evaluate import EvalSet, load_set
from retrieval.evaluation import bootstrap_interval, documents, paired_difference, score
from retrieval.fusion import fuse, query_alpha
from retrieval.keywords import tokens

DEPTH = 300
Rank = Callable[["Question"], list[str]]


@dataclass
class Question:
    qid: str
    text: str
    vector: np.ndarray[Any, Any]
    lab: Lab

    def dense(self, depth: int = 200) -> tuple[list[SearchHit], list[SearchHit]]:
        return self.lab.dense(self.vector, depth)

    def keyword(self, depth: int = 200, field: str = "text") -> tuple[list[SearchHit], list[SearchHit]]:
        return self.lab.keyword(self.qid, depth, field)


class Lab:
    """One set's index (built once, kept under bench/out/lab/) and its questions' candidates."""

    def __init__(self, settings: Settings, directory: Path) -> None:
        self.settings = settings
        self.directory = directory
        self.eval_set: EvalSet = load_set(directory)
        built = kept_index(settings, directory)
        index, home = built.index, built.home
        table = index._table.to_arrow()  # the lab reads LanceDB directly
        self.rows = table.select(["chunk_id", "document_id", "version", "idx", "level", "section", "title",
                                  "section_path", "metadata", "text"]).to_pylist()
        self.vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
        self.hits = [self._hit(i) for i in range(len(self.rows))]
        self.by_id = {r["chunk_id"]: i for i, r in enumerate(self.rows)}
        self.qv = question_embedder(settings).embed([t for _, t in self.eval_set.queries])
        self._keywords = self._keyword_candidates(index, home)
        config = wiring.retrieval_config(settings)
        self.weights, self.heading_weight = config.weights, config.heading_weight

    def _hit(self, i: int) -> SearchHit:
        r = self.rows[i]
        return SearchHit(r["chunk_id"], r["document_id"], r["version"], r["idx"], r["text"], 0.0, r["title"],
                         tuple(json.loads(r["section_path"])), json.loads(r["metadata"]), r["section"],
                         Level(r["level"]))

    def _keyword_candidates(self, index: LanceVectorIndex, home: Path
                            ) -> dict[tuple[str, str], list[tuple[int, float]]]:
        texts = [t for _, t in self.eval_set.queries]
        cache = home / f"keyword-{hashlib.sha256(json.dumps(texts).encode()).hexdigest()[:12]}.pkl"
        if cache.exists():
            return pickle.loads(cache.read_bytes())  # type: ignore[no-any-return]  # the lab's own file
        out: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for qid, text in self.eval_set.queries:
            for field, heading_weight in (("text", 0.0), ("heading", 1e6)):
                found = index.search(TENANT, SearchRequest(text=text, vector=self.vectors[0], candidates=DEPTH // 2,
                                                           levels=(Level.CHUNK, Level.SECTION),
                                                           heading_weight=heading_weight, dense=False))
                out[(qid, field)] = [(self.by_id[h.chunk_id], h.score) for h in found.keyword]
        cache.write_bytes(pickle.dumps(out))
        return out

    def dense(self, q: np.ndarray[Any, Any], depth: int) -> tuple[list[SearchHit], list[SearchHit]]:
        scores = self.vectors @ q
        top = np.argpartition(-scores, min(depth, len(scores) - 1))[:depth]
        return _levels([replace(self.hits[i], score=float(scores[i])) for i in top[np.argsort(-scores[top])]])

    def keyword(self, qid: str, depth: int, field: str = "text") -> tuple[list[SearchHit], list[SearchHit]]:
        found = self._keywords[(qid, field)][:depth]
        if field == "heading":  # heading_weight 1e6 made the text part negligible: rescale to heading BM25
            found = [(i, s / 1e6) for i, s in found]
        return _levels([replace(self.hits[i], score=s) for i, s in found])

    def questions(self) -> list[Question]:
        return [Question(qid, text, v, self) for (qid, text), v in zip(self.eval_set.queries, self.qv, strict=True)]

    def run(self, rank: Rank) -> tuple[Any, dict[str, list[str]]]:
        rankings = {q.qid: documents(rank(q)) for q in self.questions()}
        return score(rankings, {qid: self.eval_set.judgements[qid] for qid, _ in self.eval_set.queries}), rankings


def _levels(hits: list[SearchHit]) -> tuple[list[SearchHit], list[SearchHit]]:
    return [h for h in hits if h.level is Level.CHUNK], [h for h in hits if h.level is Level.SECTION]


def keyword_lists(q: Question, depth: int, heading_weight: float) -> tuple[list[SearchHit], list[SearchHit]]:
    """BM25 over the text plus `heading_weight` x BM25 over the title and heading path, as the adapters ask
    for it (a sum), over the union of the two candidate lists (an entry missing from one list scores 0 there)."""
    kc, ks = q.keyword(depth)
    if not heading_weight:
        return kc, ks
    hc, hs = q.keyword(depth, "heading")

    def combined(text: list[SearchHit], heading: list[SearchHit]) -> list[SearchHit]:
        hits = {h.chunk_id: h for h in text}
        scores = {h.chunk_id: h.score for h in text}
        for h in heading:
            scores[h.chunk_id] = scores.get(h.chunk_id, 0.0) + heading_weight * h.score
            hits.setdefault(h.chunk_id, h)
        ranked = sorted(scores.items(), key=lambda kv: -kv[1])[:depth]
        return [replace(hits[c], score=sc) for c, sc in ranked]

    return combined(kc, hc), combined(ks, hs)


def fused(depth: int = 200, heading_weight: float | None = None, fixed_alpha: bool = False,
          by_title: bool = False, **changes: Any) -> Rank:
    """The pipeline's ranking (retrieval.fusion: `query_alpha`, then `fuse`) over the lab's candidates, with
    the configured weights changed by `changes`; `fixed_alpha` skips the per-query weight, `by_title` groups
    documents by their titles for parent evidence (what issue 12 shipped, now gone from the pipeline)."""
    def rank(q: Question) -> list[str]:
        w = replace(q.lab.weights, **changes)
        hw = q.lab.heading_weight if heading_weight is None else heading_weight
        dc, ds = q.dense(depth)
        kc, ks = keyword_lists(q, depth, hw)
        if not fixed_alpha and 0 < w.alpha < 1:
            w = replace(w, alpha=query_alpha(w, kc + ks, len(set(tokens(q.text)))))
        if by_title:
            dc, ds, kc, ks = ([replace(h, metadata={"parent": h.title}) for h in hits] for hits in (dc, ds, kc, ks))
        return [s.key[0] for s in fuse(dc, kc, ds, ks, w)]
    return rank


def alternatives() -> dict[str, Rank]:
    """What RESULTS.md's issue 22 section reports: the default and one change at a time."""
    out: dict[str, Rank] = {"reference": fused()}
    out["dense"] = fused(alpha=1.0)
    out["keyword"] = fused(alpha=0.0)
    for a in (0.5, 0.6, 0.7):
        out[f"fixed alpha {a}"] = fused(alpha=a, fixed_alpha=True)
    for t in (2.0, 3.0, 3.5):
        out[f"strong keyword score {t}"] = fused(strong_keyword_score=t)
    out["strong keyword alpha 0.4"] = fused(strong_keyword_alpha=0.4)
    out["weak keyword alpha 0.8"] = fused(alpha=0.8)
    for hw in (0.0, 0.1, 0.25):
        out[f"heading weight {hw}"] = fused(heading_weight=hw)
    for pw in (0.3, 0.5):
        out[f"parent evidence {pw} (the document)"] = fused(parent_weight=pw)
        out[f"parent evidence {pw} by title (issue 12)"] = fused(parent_weight=pw, by_title=True)
    out["issue 12's default: fixed alpha 0.7, no heading field, parent 0.5 by title"] = fused(
        alpha=0.7, fixed_alpha=True, heading_weight=0.0, parent_weight=0.5, by_title=True)
    return out


def run_lab(lab: Lab, ranks: dict[str, Rank]) -> dict[str, Any]:
    results = {}
    for name, rank in ranks.items():
        started = time.perf_counter()
        if name == "whole-section dense":
            r = whole_section_dense(lab.settings, lab.eval_set, question_embedder(lab.settings))
            results[name] = (r["scores"], {})
        else:
            results[name] = lab.run(rank)
        print(f"  {lab.directory.name}: {name} ({time.perf_counter() - started:.1f}s)", file=sys.stderr, flush=True)
    first = next(iter(results.values()))[0]
    best = max((s for s, _ in results.values()), key=lambda s: sum(s.ndcg10))
    report: dict[str, Any] = {"set": str(lab.directory), "queries": len(first.ndcg10), "configs": {}}
    for name, (scores, _) in results.items():
        report["configs"][name] = scores.means() | {
            "ndcg@10_ci95": bootstrap_interval(scores.ndcg10),
            "vs_first": paired_difference(first.ndcg10, scores.ndcg10),
            "vs_best": paired_difference(best.ndcg10, scores.ndcg10), "per_query_ndcg@10": scores.ndcg10}
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("directories", type=Path, nargs="*")
    ap.add_argument("--matrix", type=Path, help="a file listing set directories, one per line (bench/sets.py)")
    ap.add_argument("--only", help="comma-separated alternatives (default: all)")
    ap.add_argument("--json", type=Path, metavar="OUT")
    args = ap.parse_args()
    directories = list(args.directories)
    if args.matrix:
        directories += [Path(line.strip()) for line in args.matrix.read_text().splitlines() if line.strip()]
    ranks = alternatives()
    if args.only:
        wanted = ["reference", *args.only.split(",")]
        ranks = {n: ranks[n] for n in dict.fromkeys(wanted)}
    settings = Settings()
    reports = [run_lab(Lab(settings, d), ranks) for d in directories]
    print_matrix(reports)
    if args.json:
        args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "sets": reports}))


if __name__ == "__main__":
    main()
