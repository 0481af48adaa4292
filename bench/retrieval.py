"""Retrieval quality on real data: nDCG@10 and recall@10 of ragbus's chunking + embedding + hybrid search
for several values of alpha (1 = vector only, 0 = BM25 only).

    python bench/retrieval.py [--data ../shared/data/pydocs-faq-dev] [--alphas 0,0.25,0.5,0.75,0.9,1]

The corpus sections are chunked and embedded exactly as the pipeline does it (same Chunker settings,
contextual header, model) and written to the embedded LanceDB index; each question is answered by the
index's hybrid search, chunk hits are folded to their documents (best rank wins), and the ranked
documents are scored against qrels.tsv. Runs in-process (no Kafka): this measures retrieval, not the bus.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the ONNX export `make install` made, not one per temporary data directory
os.environ.setdefault("RAGBUS_EMBEDDER_ONNX_DIR", str(Path(__file__).resolve().parent.parent / ".ragbus" / "models"))

from chunking.splitter import Chunker, embedding_text
from infra import wiring
from infra.models.embedder import load_tokenizer
from infra.settings import Settings
from infra.stores.lance import LanceVectorIndex
from kernel.ports import ChunkRecord
from schemas.events import ContentType, chunk_uuid

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared/data/pydocs-faq-dev"


def ndcg_at_10(ranked: list[str], relevant: set[str]) -> float:
    dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(ranked[:10]) if d in relevant)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(10, len(relevant))))
    return dcg / ideal if ideal else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--alphas", default="0,0.25,0.5,0.75,0.9,1")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-optimize", action="store_true",
                    help="search before the index is optimised (every new row outside the full-text index)")
    args = ap.parse_args()
    settings = Settings()
    corpus = [json.loads(line) for line in (args.data / "corpus.jsonl").open()]
    queries = [json.loads(line) for line in (args.data / "queries.jsonl").open()]
    qrels: dict[str, set[str]] = {}
    for line in (args.data / "qrels.tsv").open():
        q, d, score = line.rstrip("\n").split("\t")
        if q != "query-id" and float(score) > 0:
            qrels.setdefault(q, set()).add(d)

    chunker = Chunker(load_tokenizer(settings.embedder.model), settings.chunker.size_tokens,
                      settings.chunker.overlap_tokens)
    embedder = wiring.build_embedder(settings)  # RAGBUS_EMBEDDER_BACKEND=onnx|torch
    started = time.perf_counter()
    pieces = []
    for doc in corpus:
        for c in chunker.chunk(ContentType.TEXT, doc["text"]):
            pieces.append((doc, c))
    vectors = embedder.embed([embedding_text(d["title"], c.section_path, c.text) for d, c in pieces])
    embed_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="ragbus-retrieval-") as tmp:
        index = LanceVectorIndex(Path(tmp), embedder.dim)
        records = [ChunkRecord(chunk_uuid("eval", d["id"], 1, c.index), "eval", d["id"], 1, c.index, c.text, v,
                               d["title"], tuple(c.section_path)) for (d, c), v in zip(pieces, vectors, strict=True)]
        for i in range(0, len(records), 2000):
            index.upsert(records[i:i + 2000])
        if not args.no_optimize:
            index.maintain()  # what the indexer's upkeep thread does: fold the new rows into the full-text index
        qvecs = embedder.embed([q["text"] for q in queries])
        results = {}
        for alpha in (float(a) for a in args.alphas.split(",")):
            ndcg, recall, latency = [], [], []
            for q, qv in zip(queries, qvecs, strict=True):
                t = time.perf_counter()
                hits = index.hybrid_search("eval", q["text"], qv, limit=50, candidates=200, alpha=alpha)
                latency.append(time.perf_counter() - t)
                ranked = list(dict.fromkeys(h.document_id for h in hits))
                ndcg.append(ndcg_at_10(ranked, qrels.get(q["id"], set())))
                recall.append(float(bool(set(ranked[:10]) & qrels.get(q["id"], set()))))
            results[alpha] = {"ndcg@10": round(sum(ndcg) / len(ndcg), 4),
                              "recall@10": round(sum(recall) / len(recall), 4),
                              "p50_search_ms": round(sorted(latency)[len(latency) // 2] * 1000, 1)}
    report = {"embedder": embedder.name, "documents": len(corpus), "chunks": len(pieces), "queries": len(queries),
              "embed_s": round(embed_s, 1), "by_alpha": results, "date": time.strftime("%Y-%m-%d")}
    if args.json:
        print(json.dumps(report))
        return
    print(f"{embedder.name}: {len(corpus)} documents, {len(pieces)} chunks, {len(queries)} queries, "
          f"embedded in {embed_s:.0f}s")
    print(f"{'alpha':>6} {'nDCG@10':>8} {'recall@10':>10} {'p50 ms':>7}")
    for alpha, r in results.items():
        print(f"{alpha:>6} {r['ndcg@10']:>8} {r['recall@10']:>10} {r['p50_search_ms']:>7}")


if __name__ == "__main__":
    main()
