"""Retrieval quality and latency of ragbus's own retrieval path, over a matrix of sets and structures.

    python bench/retrieval.py DIR [DIR ...] [--matrix FILE] [--configs default,dense,...] [--json OUT] [--list]

Each DIR is a BEIR-layout set (corpus.jsonl, queries.jsonl, qrels.tsv); `--matrix bench/out/sets/matrix.txt`
takes the rows bench/sets.py built (pydocs-faq-dev under four document structures, man pages as Markdown
and as plain text, the Debian package sets). Every corpus row becomes the event `ragbus ingest` would
publish for it (its `content_type`, `title` and `metadata` included) and goes through the pipeline's own
stage functions without Kafka (chunker -> embedder -> indexer, into LanceDB and SQLite in a temporary
directory), so chunks, section entries and vectors are exactly what the pipeline stores; vectors are cached
on disk (bench/out/vectors.sqlite, keyed by model and text like the pipeline's cache), so a second run does
not embed again. Every query then runs through `retrieval.retriever.Retriever` with the settings of each
configuration: the code the answerer runs, with the same candidate depth.

Besides the named configurations, `whole-section dense` is the baseline a default must never fall below:
one vector per document (its title and text, truncated where the model truncates), exact cosine.

Per set it prints nDCG@10 with its 95% bootstrap interval over queries, recall@10/@100, MRR@10, the
difference to the first configuration with its paired bootstrap interval, and search + fusion latency
p50/p95 (the question vector is cached). Then one table over every set: each configuration's nDCG@10, its
paired difference to the first configuration, and a mark where it is below the row's best configuration
beyond the paired noise (the interval of the difference excludes 0); and each configuration's worst row.
A default is chosen by that worst row. `ragbus eval DIR [DIR ...]` measures the same through the bus.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the ONNX export `make install` made, not one per temporary data directory
os.environ.setdefault("RAGBUS_EMBEDDER_ONNX_DIR", str(Path(__file__).resolve().parent.parent / ".ragbus" / "models"))

from chunking.splitter import Chunker, embedding_text
from consumers.indexer import Indexer
from infra.models.embedder import load_tokenizer
from infra.ops.metrics import Metrics
from infra.settings import RetrievalSettings, Settings
from infra.stores.lance import LanceVectorIndex
from infra.stores.sqlite import SqliteDocumentStore, SqliteEmbeddingCache
from ragbus import wiring
from ragbus.client import row_event
from ragbus.evaluate import EvalSet, load_set, percentile
from retrieval.evaluation import bootstrap_interval, documents, paired_difference, score
from retrieval.retriever import Retriever
from schemas.topics import TOPICS
from streams.chunker import chunk_event
from streams.embedder import CachedEmbedder, embed_events

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
TENANT = "bench"
WHOLE = "whole-section dense"
#: Named configurations: overrides of RetrievalSettings (the environment's values, else the defaults).
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "dense": {"mode": "dense"},
    "keyword": {"mode": "keyword"},
    WHOLE: {},
    # one change each from the default
    "fixed alpha 0.7": {"strong_keyword_alpha": 0.7},
    "fixed alpha 0.6": {"alpha": 0.6, "strong_keyword_alpha": 0.6},
    "no heading field": {"heading_weight": 0.0},
    "parent evidence 0.5 (metadata parent, else the document)": {"parent_weight": 0.5},
    "no exact-match rule": {"exact_match_ratio": 0.0},
    "chunks only": {"sections": False},
    # issue 26: half the candidate depth (100 -> 50 per level and retriever) saves ~11% of a query's CPU
    "candidates 50": {"candidates": 50},
    # issue 12's default without its title grouping (which no longer exists): fixed alpha, no heading field
    "before issue 22, without title grouping": {"strong_keyword_alpha": 0.7, "heading_weight": 0.0,
                                                "parent_weight": 0.5},
}
DEFAULT_CONFIGS = ("default", "dense", "keyword", WHOLE)


def corpus_rows(eval_set: EvalSet) -> list[dict[str, Any]]:
    with eval_set.corpus.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def build_index(settings: Settings, directory: Path, tmp: Path) -> tuple[LanceVectorIndex, int, int, float]:
    eval_set = load_set(directory)
    model = wiring.passage_embedder(settings)
    cached = CachedEmbedder(model, SqliteEmbeddingCache(OUT / "vectors.sqlite"))
    chunker = Chunker(load_tokenizer(settings.embedder.model), settings.chunker.size_tokens,
                      settings.chunker.overlap_tokens)
    store = SqliteDocumentStore(tmp / "store.sqlite")
    index = LanceVectorIndex(tmp / "lance", model.dim)
    indexer = Indexer(index, store, Metrics(), model.dim)
    started = time.perf_counter()
    rows = corpus_rows(eval_set)
    chunks = 0
    for start in range(0, len(rows), 256):
        events = [row_event(settings, store, r, tenant=TENANT, correlation="bench", source=f"{directory}:{n}")
                  for n, r in enumerate(rows[start:start + 256], start + 1)]
        produced = [o.event for ev in events for o in chunk_event(ev, chunker, store.get_content)
                    if o.topic is TOPICS.chunks]
        embedded = [o.event for outs in embed_events(produced, cached) if not isinstance(outs, Exception)
                    for o in outs if o.topic is TOPICS.embedded]
        for result in indexer.handle(embedded):
            if isinstance(result, Exception):
                raise result
        chunks += sum(len(e.chunks) for e in embedded)
        print(f"  {directory.name}: indexed {min(start + 256, len(rows))}/{len(rows)} documents "
              f"({cached.computed} embedded)", file=sys.stderr, flush=True)
    index.maintain(force=True)  # what the indexer does in the background: fold new rows into the indexes
    return index, len(rows), chunks, time.perf_counter() - started


@dataclass
class Built:
    index: LanceVectorIndex
    documents: int
    chunks: int
    build_s: float
    home: Path


def kept_index(settings: Settings, directory: Path) -> Built:
    """The set's index built once into bench/out/lab/ and reused while what makes it (model, chunk sizes, the
    chunking, embedding and indexing code) is unchanged: building a 20,000-document set takes minutes even
    with every vector cached, and quality comparisons need only the same index."""
    code = b"".join(p.read_bytes() for p in sorted([*ROOT.glob("chunking/*.py"), ROOT / "streams/chunker.py",
                                                    ROOT / "streams/embedder.py", ROOT / "consumers/indexer.py",
                                                    ROOT / "infra/stores/lance.py"]))
    recipe = (f"{settings.embedder.model}|{settings.chunker.size_tokens}|{settings.chunker.overlap_tokens}|"
              f"{hashlib.sha256(code).hexdigest()}")
    home = OUT / "lab" / f"{directory.name}-{hashlib.sha256(recipe.encode()).hexdigest()[:8]}"
    built = home / "built.json"
    if built.exists():
        facts = json.loads(built.read_text())
        return Built(LanceVectorIndex(home / "lance", wiring.passage_embedder(settings).dim), facts["documents"],
                     facts["chunks"], facts["build_s"], home)
    if home.exists():
        shutil.rmtree(home)  # a build that did not finish
    home.mkdir(parents=True)
    index, docs, chunks, build_s = build_index(settings, directory, home)
    built.write_text(json.dumps({"recipe": recipe, "documents": docs, "chunks": chunks, "build_s": build_s}))
    return Built(index, docs, chunks, build_s, home)


def question_embedder(settings: Settings) -> CachedEmbedder:
    """The answerer's question embedder behind the disk cache: every configuration after the first gets
    the same vectors without the model, so their latencies compare search and fusion alone."""
    return CachedEmbedder(wiring.query_embedder(settings), SqliteEmbeddingCache(OUT / "vectors.sqlite"))


def whole_section_dense(settings: Settings, eval_set: EvalSet, questions: CachedEmbedder) -> dict[str, Any]:
    """One vector per document (title and text, as far as the model reads), ranked by exact cosine."""
    rows = corpus_rows(eval_set)
    passages = CachedEmbedder(wiring.passage_embedder(settings), SqliteEmbeddingCache(OUT / "vectors.sqlite"))
    docs = np.asarray(passages.embed([embedding_text(str(r.get("title") or ""), [], r["text"]) for r in rows]),
                      dtype=np.float32)
    ids = [str(r["id"]) for r in rows]
    qv = np.asarray(questions.embed([text for _, text in eval_set.queries]), dtype=np.float32)
    rankings, latency = {}, []
    for (qid, _), q in zip(eval_set.queries, qv, strict=True):
        t = time.perf_counter()
        top = np.argsort(-(docs @ q))[:100]
        latency.append((time.perf_counter() - t) * 1000)
        rankings[qid] = [ids[i] for i in top]
    return _result({}, eval_set, rankings, latency)


def _result(overrides: dict[str, Any], eval_set: EvalSet, rankings: dict[str, list[str]],
            latency: list[float]) -> dict[str, Any]:
    scores = score(rankings, {qid: eval_set.judgements[qid] for qid, _ in eval_set.queries})
    return {"settings": overrides, "scores": scores, **scores.means(),
            "ndcg@10_ci95": bootstrap_interval(scores.ndcg10),
            "latency_ms": {"p50": percentile(latency, 50), "p95": percentile(latency, 95)}}


def embedding_latency(settings: Settings, eval_set: EvalSet) -> dict[str, float]:
    model = wiring.query_embedder(settings)
    times = []
    for _, text in eval_set.queries[:50]:
        t = time.perf_counter()
        model.embed([text])
        times.append((time.perf_counter() - t) * 1000)
    return {"p50": percentile(times, 50), "p95": percentile(times, 95)}


def warm_up(settings: Settings, index: LanceVectorIndex, eval_set: EvalSet, questions: CachedEmbedder) -> None:
    """Every query once, untimed, before any configuration is timed: the first configuration would otherwise
    pay for the index's caches (measured: its p50 was ~40% above the same configuration run again)."""
    queries = [text for _, text in eval_set.queries]
    questions.embed(queries)
    retriever = Retriever(questions, index, wiring.retrieval_config(settings))
    for text in queries:
        retriever.retrieve(TENANT, text, 100)


def run_config(settings: Settings, index: LanceVectorIndex, eval_set: EvalSet, overrides: dict[str, Any],
               questions: CachedEmbedder) -> dict[str, Any]:
    retrieval = RetrievalSettings(**(settings.retrieval.model_dump() | overrides))
    configured = settings.model_copy(update={"retrieval": retrieval})
    questions.embed([text for _, text in eval_set.queries])  # warm: latency below is search and fusion
    retriever = Retriever(questions, index, wiring.retrieval_config(configured))
    rankings, latency = {}, []
    for qid, text in eval_set.queries:
        t = time.perf_counter()
        hits = retriever.retrieve(TENANT, text, 100)
        latency.append((time.perf_counter() - t) * 1000)
        rankings[qid] = documents([h.document_id for h in hits])
    return _result(overrides, eval_set, rankings, latency)


def run_set(settings: Settings, directory: Path, configs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    eval_set = load_set(directory)
    questions = question_embedder(settings)
    built = kept_index(settings, directory)
    index, docs, chunks, build_s = built.index, built.documents, built.chunks, built.build_s
    warm_up(settings, index, eval_set, questions)
    results = {name: whole_section_dense(settings, eval_set, questions) if name == WHOLE
               else run_config(settings, index, eval_set, overrides, questions)
               for name, overrides in configs.items()}
    first = next(iter(results.values()))
    best = max(results.values(), key=lambda r: r["ndcg@10"])
    report: dict[str, Any] = {
        "set": str(directory), "documents": docs, "chunks": chunks, "queries": len(eval_set.queries),
        "build_s": round(build_s, 1), "question_embedding_ms": embedding_latency(settings, eval_set),
        "candidates": settings.retrieval.candidates, "configs": {}}
    for name, r in results.items():
        report["configs"][name] = {k: v for k, v in r.items() if k != "scores"} | {
            "vs_first": paired_difference(first["scores"].ndcg10, r["scores"].ndcg10),
            "vs_best": paired_difference(best["scores"].ndcg10, r["scores"].ndcg10),
            "per_query_ndcg@10": r["scores"].ndcg10}
    return report


def print_set(report: dict[str, Any]) -> None:
    print(f"\n{report['set']}: {report['documents']} documents, {report['chunks']} chunks, "
          f"{report['queries']} queries; candidates {report['candidates']}; built in {report['build_s']:.0f}s; "
          f"embedding a question: p50 {report['question_embedding_ms']['p50']} ms (not in the latencies below: "
          "search and fusion only)")
    print("| configuration | nDCG@10 (95% CI) | vs first (95% CI) | recall@10 | recall@100 | MRR@10 | p50 ms "
          "| p95 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in report["configs"].items():
        lo, hi = r["ndcg@10_ci95"]
        d, dlo, dhi = r["vs_first"]
        print(f"| {name} | {r['ndcg@10']:.3f} ({lo:.3f}-{hi:.3f}) | {d:+.3f} ({dlo:+.3f}, {dhi:+.3f}) | "
              f"{r['recall@10']:.3f} | {r['recall@100']:.3f} | {r['mrr@10']:.3f} | {r['latency_ms']['p50']} | "
              f"{r['latency_ms']['p95']} |")


def print_matrix(reports: list[dict[str, Any]]) -> None:
    """One line per set: every configuration's nDCG@10 and its paired difference to the first; `*` marks a
    configuration below that row's best beyond the paired noise. Last lines: each configuration's worst
    difference to the first configuration and to the row's best, and on how many rows it is marked."""
    names = list(reports[0]["configs"])
    print("\nnDCG@10 over the matrix; (difference to the first configuration, paired 95% interval); "
          "* below the row's best beyond the paired noise")
    print("| set | queries | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for rep in reports:
        cells = []
        for name in names:
            r = rep["configs"][name]
            d, dlo, dhi = r["vs_first"]
            mark = "*" if r["vs_best"][2] < 0 else ""
            cells.append(f"{r['ndcg@10']:.3f}{mark}" if name == names[0] else
                         f"{r['ndcg@10']:.3f}{mark} ({d:+.3f}, {dlo:+.3f}..{dhi:+.3f})")
        print(f"| {Path(rep['set']).name} | {rep['queries']} | " + " | ".join(cells) + " |")
    worst_first = [min(rep["configs"][n]["vs_first"][0] for rep in reports) for n in names]
    worst_best = [min(rep["configs"][n]["vs_best"][0] for rep in reports) for n in names]
    marked = [sum(rep["configs"][n]["vs_best"][2] < 0 for rep in reports) for n in names]
    print("| worst difference to the first | | " + " | ".join(f"{w:+.3f}" for w in worst_first) + " |")
    print("| worst difference to the row's best | | " + " | ".join(f"{w:+.3f}" for w in worst_best) + " |")
    print("| rows below the best beyond noise | | " + " | ".join(str(m) for m in marked) + " |")


def parse_configs(names: str, extra: list[str]) -> dict[str, dict[str, Any]]:
    configs = {n: CONFIGS[n] for n in names.split("|") if n}
    for spec in extra:
        name, _, pairs = spec.partition(":")
        configs[name] = {k: json.loads(v) if v[:1] in "0123456789-.tf[{\"" else v
                         for k, v in (p.split("=", 1) for p in pairs.split(";") if p)}
    return configs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("directories", type=Path, nargs="*")
    ap.add_argument("--matrix", type=Path, help="a file listing set directories, one per line (bench/sets.py)")
    ap.add_argument("--configs", default="|".join(DEFAULT_CONFIGS), help="'|'-separated names from --list")
    ap.add_argument("--set", action="append", default=[], metavar="NAME:KEY=VALUE[;KEY=VALUE]",
                    help="an extra configuration, e.g. 'alpha 0.6:alpha=0.6;section_weight=0.3'")
    ap.add_argument("--list", action="store_true", help="print the named configurations")
    ap.add_argument("--json", type=Path, metavar="OUT", help="also write every figure (per-query nDCG too) here")
    args = ap.parse_args()
    if args.list:
        for name, overrides in CONFIGS.items():
            print(f"{name}: {overrides}")
        return
    directories = list(args.directories)
    if args.matrix:
        directories += [Path(line.strip()) for line in args.matrix.read_text().splitlines() if line.strip()]
    if not directories:
        ap.error("name at least one set directory, or --matrix FILE")
    configs = parse_configs(args.configs, args.set)
    settings = Settings()
    OUT.mkdir(exist_ok=True)
    reports = []
    for directory in directories:
        reports.append(run_set(settings, directory, configs))
        print_set(reports[-1])
        sys.stdout.flush()
    if len(reports) > 1:
        print_matrix(reports)
    if args.json:
        args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "sets": reports}))


if __name__ == "__main__":
    main()
