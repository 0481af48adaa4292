"""Retrieval quality and latency of ragbus's own retrieval path, configuration by configuration.

    python bench/retrieval.py DIR [--configs default,dense,...] [--json] [--list]

DIR is a BEIR-layout set (corpus.jsonl, queries.jsonl, qrels.tsv), e.g. ../shared/data/pydocs-faq-dev or
a set made by bench/packages_set.py. The corpus goes through the pipeline's own stage functions without
Kafka (chunker -> embedder -> indexer, into LanceDB and SQLite in a temporary directory), so chunks,
section entries and vectors are exactly what the pipeline stores; vectors are cached on disk
(bench/out/vectors.sqlite, keyed by model and text like the pipeline's cache), so a second run does not
embed again. Every query then runs through `retrieval.retriever.Retriever` with the settings of each
configuration: the code the answerer runs, with the same candidate depth (RAGBUS_RETRIEVAL_CANDIDATES
unless a configuration overrides it).

For each configuration it prints nDCG@10 with its 95% bootstrap interval over queries, recall@10/@100,
MRR@10, the difference to the first configuration with its paired bootstrap interval (a gain whose
interval holds 0 is within the noise of the set), and retrieval latency p50/p95 (question embedding
excluded, it is the same for every configuration and printed once: search and fusion). `ragbus eval
DIR` measures the same through the bus.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the ONNX export `make install` made, not one per temporary data directory
os.environ.setdefault("RAGBUS_EMBEDDER_ONNX_DIR", str(Path(__file__).resolve().parent.parent / ".ragbus" / "models"))

from chunking.splitter import Chunker
from consumers.indexer import Indexer
from infra import wiring
from infra.models.embedder import load_tokenizer
from infra.ops.metrics import Metrics
from infra.settings import RetrievalSettings, Settings
from infra.stores.lance import LanceVectorIndex
from infra.stores.sqlite import SqliteDocumentStore, SqliteEmbeddingCache
from ragbus.evaluate import load_set, percentile
from retrieval.evaluation import bootstrap_interval, documents, paired_difference, score
from retrieval.retriever import Retriever
from schemas.events import ContentType, DocumentArrived
from schemas.topics import TOPICS
from streams.chunker import chunk_event
from streams.embedder import CachedEmbedder, embed_events

OUT = Path(__file__).resolve().parent / "out"
TENANT = "bench"
#: Named configurations: overrides of RetrievalSettings (the environment's values, else the defaults).
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "dense": {"mode": "dense"},
    "keyword": {"mode": "keyword"},
    "before: chunks only; alpha 0.75; no exact-match rule": {"sections": False, "exact_match_ratio": 0.0,
                                                             "alpha": 0.75, "parent_weight": 0.0},
    "no parent evidence": {"parent_weight": 0.0},
    "dense, no parent evidence": {"mode": "dense", "parent_weight": 0.0},
    "keyword, no parent evidence": {"mode": "keyword", "parent_weight": 0.0},
    "chunks only; exact-match rule": {"sections": False},
    "dense chunks only": {"mode": "dense", "sections": False},
    "keyword chunks only": {"mode": "keyword", "sections": False},
    "no exact-match rule": {"exact_match_ratio": 0.0},
}


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
    rows = [json.loads(line) for line in eval_set.corpus.open(encoding="utf-8") if line.strip()]
    chunks = 0
    for start in range(0, len(rows), 256):
        events = [DocumentArrived(tenant=TENANT, document_id=str(r["id"]), title=str(r.get("title") or ""),
                                  text=r["text"], content_type=ContentType.TEXT, version=1)
                  for r in rows[start:start + 256]]
        produced = [o.event for ev in events for o in chunk_event(ev, chunker, store.get_content)
                    if o.topic is TOPICS.chunks]
        embedded = [o.event for outs in embed_events(produced, cached) if not isinstance(outs, Exception)
                    for o in outs if o.topic is TOPICS.embedded]
        for result in indexer.handle(embedded):
            if isinstance(result, Exception):
                raise result
        chunks += sum(len(e.chunks) for e in embedded)
        print(f"  indexed {min(start + 256, len(rows))}/{len(rows)} documents ({cached.computed} embedded)",
              file=sys.stderr, flush=True)
    index.maintain(force=True)  # what the indexer does in the background: fold new rows into the indexes
    return index, len(rows), chunks, time.perf_counter() - started


def question_embedder(settings: Settings) -> CachedEmbedder:
    """The answerer's question embedder behind the disk cache: every configuration after the first gets
    the same vectors without the model, so their latencies compare search and fusion alone."""
    return CachedEmbedder(wiring.query_embedder(settings), SqliteEmbeddingCache(OUT / "vectors.sqlite"))


def embedding_latency(settings: Settings, directory: Path) -> dict[str, float]:
    model = wiring.query_embedder(settings)
    times = []
    for _, text in load_set(directory).queries[:50]:
        t = time.perf_counter()
        model.embed([text])
        times.append((time.perf_counter() - t) * 1000)
    return {"p50": percentile(times, 50), "p95": percentile(times, 95)}


def warm_up(settings: Settings, index: LanceVectorIndex, directory: Path, questions: CachedEmbedder) -> None:
    """Every query once, untimed, before any configuration is timed: the first configuration would otherwise
    pay for the index's caches (measured: its p50 was ~40% above the same configuration run again)."""
    queries = [text for _, text in load_set(directory).queries]
    questions.embed(queries)
    retriever = Retriever(questions, index, wiring.retrieval_config(settings))
    for text in queries:
        retriever.retrieve(TENANT, text, 100)


def run_config(settings: Settings, index: LanceVectorIndex, directory: Path, overrides: dict[str, Any],
               questions: CachedEmbedder) -> dict[str, Any]:
    eval_set = load_set(directory)
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
    scores = score(rankings, {qid: eval_set.judgements[qid] for qid, _ in eval_set.queries})
    return {"settings": overrides, "scores": scores, **scores.means(),
            "ndcg@10_ci95": bootstrap_interval(scores.ndcg10),
            "latency_ms": {"p50": percentile(latency, 50), "p95": percentile(latency, 95)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("directory", type=Path)
    ap.add_argument("--configs", default="|".join(CONFIGS), help="'|'-separated names from --list")
    ap.add_argument("--set", action="append", default=[], metavar="NAME:KEY=VALUE[;KEY=VALUE]",
                    help="an extra configuration, e.g. 'alpha 0.6:alpha=0.6;section_weight=0.3'")
    ap.add_argument("--list", action="store_true", help="print the named configurations")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.list:
        for name, overrides in CONFIGS.items():
            print(f"{name}: {overrides}")
        return
    configs = {n: CONFIGS[n] for n in args.configs.split("|") if n}
    for spec in args.set:
        name, _, pairs = spec.partition(":")
        configs[name] = {k: json.loads(v) if v[:1] in "0123456789-.tf[{\"" else v
                         for k, v in (p.split("=", 1) for p in pairs.split(";") if p)}
    settings = Settings()
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ragbus-retrieval-") as tmp:
        index, docs, chunks, build_s = build_index(settings, args.directory, Path(tmp))
        questions = question_embedder(settings)
        warm_up(settings, index, args.directory, questions)
        results = {name: run_config(settings, index, args.directory, overrides, questions)
                   for name, overrides in configs.items()}
        embed_ms = embedding_latency(settings, args.directory)
    first = next(iter(results.values()))
    report = {"set": str(args.directory), "documents": docs, "chunks": chunks, "build_s": round(build_s, 1),
              "question_embedding_ms": embed_ms,
              "candidates": settings.retrieval.candidates, "date": time.strftime("%Y-%m-%d"), "configs": {}}
    for name, r in results.items():
        diff = paired_difference(first["scores"].ndcg10, r["scores"].ndcg10)
        report["configs"][name] = {k: v for k, v in r.items() if k != "scores"} | {"vs_first": diff}
    if args.json:
        print(json.dumps(report))
        return
    print(f"{args.directory}: {docs} documents, {chunks} chunks, {len(first['scores'].ndcg10)} queries; "
          f"candidates {settings.retrieval.candidates}; built in {build_s:.0f}s; embedding a question: "
          f"p50 {embed_ms['p50']} ms (not in the latencies below: search and fusion only)")
    print("| configuration | nDCG@10 (95% CI) | vs first (95% CI) | recall@10 | recall@100 | MRR@10 | p50 ms "
          "| p95 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in report["configs"].items():
        lo, hi = r["ndcg@10_ci95"]
        d, dlo, dhi = r["vs_first"]
        print(f"| {name} | {r['ndcg@10']:.3f} ({lo:.3f}-{hi:.3f}) | {d:+.3f} ({dlo:+.3f}, {dhi:+.3f}) | "
              f"{r['recall@10']:.3f} | {r['recall@100']:.3f} | {r['mrr@10']:.3f} | {r['latency_ms']['p50']} | "
              f"{r['latency_ms']['p95']} |")


if __name__ == "__main__":
    main()
