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
from infra import wiring
from infra.settings import Settings
from infra.stores.lance import LanceVectorIndex
from kernel.ports import Level, SearchHit, SearchRequest
from ragbus.evaluate import EvalSet, load_set
from retrieval.evaluation import bootstrap_interval, documents, paired_difference, score
from retrieval.fusion import Weights, best_per_section, fuse

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
        self.weights = wiring.retrieval_config(settings).weights

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


def fused(weights: Weights | None = None, depth: int = 200, **changes: Any) -> Rank:
    """retrieval.fusion.fuse over the lab's candidates, with the lab's weights changed by `changes`."""
    def rank(q: Question) -> list[str]:
        w = replace(weights or q.lab.weights, **changes)
        dc, ds = q.dense(depth)
        kc, ks = q.keyword(depth)
        return [s.key[0] for s in fuse(dc, kc, ds, ks, w)]
    return rank


def evidence(q: Question, depth: int = 200) -> tuple[dict[Any, float], dict[Any, float]]:
    """Each retriever's evidence per section before alpha: (1 - sw) * best chunk + sw * section entry."""
    w = q.lab.weights
    dc, ds = q.dense(depth)
    kc, ks = q.keyword(depth)
    out = []
    for (chunks, sections), sw in (((dc, ds), w.section_weight), ((kc, ks), w.keyword_section_weight)):
        e: dict[Any, float] = {}
        for share, level in ((1 - sw, best_per_section(chunks)), (sw, best_per_section(sections))):
            for key, value in level.items():
                e[key] = e.get(key, 0.0) + share * value
        out.append(e)
    return out[0], out[1]


def decisiveness(e: dict[Any, float], k: int) -> float:
    """How far a retriever's best section stands above its next k (0: a flat list, 1: one clear winner)."""
    ordered = sorted(e.values(), reverse=True)
    if len(ordered) < 2 or ordered[0] <= 0:
        return 0.0
    rest = ordered[1:k + 1]
    return max(0.0, (ordered[0] - sum(rest) / len(rest)) / ordered[0])


def adaptive(k: int = 10, power: float = 1.0, **changes: Any) -> Rank:
    """alpha moved per query towards the retriever whose evidence is more decisive:
    a_q = a * dD^p / (a * dD^p + (1 - a) * dK^p)."""
    def rank(q: Question) -> list[str]:
        w = replace(q.lab.weights, **changes)
        dense_e, keyword_e = evidence(q)
        dd, dk = decisiveness(dense_e, k) ** power, decisiveness(keyword_e, k) ** power
        a = w.alpha * dd / (w.alpha * dd + (1 - w.alpha) * dk) if dd + dk > 0 else w.alpha
        dc, ds = q.dense(200)
        kc, ks = q.keyword(200)
        return [s.key[0] for s in fuse(dc, kc, ds, ks, replace(w, alpha=a))]
    return rank


def grouped_by_document(**changes: Any) -> Rank:
    """Parent evidence from the document alone (its sections are one work), never from a shared title."""
    def rank(q: Question) -> list[str]:
        w = replace(q.lab.weights, **changes)
        lists = [*q.dense(200), *q.keyword(200)]
        dc, ds, kc, ks = ([replace(h, title=h.document_id) for h in hits] for hits in lists)
        return [s.key[0] for s in fuse(dc, kc, ds, ks, w)]
    return rank


def alternatives() -> dict[str, Rank]:
    out: dict[str, Rank] = {"reference": fused()}
    out["dense"] = fused(alpha=1.0)
    out["keyword"] = fused(alpha=0.0)
    out["no parent evidence"] = fused(parent_weight=0.0)
    for pw in (0.3, 0.5):
        out[f"parent {pw} by document"] = grouped_by_document(parent_weight=pw)
    for a in (0.5, 0.6, 0.8):
        out[f"alpha {a}, no parent"] = fused(alpha=a, parent_weight=0.0)
    for k in (5, 10, 20):
        for p in (1.0, 2.0):
            out[f"adaptive k{k} p{p}, no parent"] = adaptive(k, p, parent_weight=0.0)
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
