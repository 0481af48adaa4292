"""How the embedded vector index's cost grows: 2k, 20k and 200k chunks, in-process (no bus).

    python bench/scale.py --real-dir DIR [--sizes 2000,20000,200000] [--json]

`--real-dir` is a data directory holding real chunks (bench/latency.py --chunks 20000 --data-dir DIR makes
one); sizes above what it holds are topped up with synthetic chunks (a real chunk's vector plus noise, text
of real words: bench/corpus.py). For each size, on a fresh LanceDB table:

- write: rows upserted in batches of 256, as the indexer does, with the upkeep thread's maintenance running
  beside them every 2 s; rows/s over the whole fill and over its last tenth;
- search: the answerer's search and fusion (`Retriever.rank` with the configured retrieval settings: both
  retrievers, both levels, RAGBUS_RETRIEVAL_CANDIDATES deep) for the 87 FAQ questions after maintenance,
  right after 2 s of new rows that maintenance has not folded in yet, and while a maintenance run is in
  progress;
- recall@10 of the vector search as retrieval runs it (the same request, dense side only) against exact
  search (numpy, all rows), for the 87 questions and 200 sampled chunks: the share of its first 10 that are
  at least as close as the exact 10th nearest (the corpus repeats some chunks word for word, and between
  equally close rows either is right).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.corpus import percentile, questions, real_rows
from bench.report import run_facts
from infra.settings import Settings
from infra.stores import lance_maintenance
from infra.stores.lance import LanceVectorIndex
from kernel.ports import ChunkRecord, Level, SearchRequest
from ragbus import wiring
from retrieval.retriever import Retriever
from schemas.events import chunk_uuid

BATCH = 256


def rows_for(size: int, texts: list[str], vectors: np.ndarray[Any, Any], seed: int = 5
             ) -> tuple[list[str], np.ndarray[Any, Any]]:
    if size <= len(vectors):
        return texts[:size], vectors[:size]
    rng = np.random.default_rng(seed)
    extra = size - len(vectors)
    base = rng.integers(0, len(vectors), extra)
    noisy = vectors[base] + rng.normal(scale=0.45 / np.sqrt(vectors.shape[1]), size=(extra, vectors.shape[1]))
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    words = " ".join(texts[:2000]).split()
    starts = rng.integers(0, len(words) - 160, extra)
    return texts + [" ".join(words[s:s + 150]) for s in starts], np.vstack([vectors, noisy.astype(np.float32)])


def records(texts: list[str], vectors: np.ndarray[Any, Any], offset: int) -> list[ChunkRecord]:
    return [ChunkRecord(chunk_uuid("default", f"d{(offset + i) // 8}", 1, (offset + i) % 8), "default",
                        f"d{(offset + i) // 8}", 1, (offset + i) % 8, t, v, f"Doc {(offset + i) // 8}")
            for i, (t, v) in enumerate(zip(texts, vectors, strict=True))]


def timed_searches(retriever: Retriever, qs: list[str], qv: np.ndarray[Any, Any]) -> dict[str, float]:
    ms = []
    for text, vector in zip(qs, qv, strict=True):
        started = time.perf_counter()
        retriever.rank("default", text, vector)
        ms.append((time.perf_counter() - started) * 1000)
    return {"p50": round(percentile(ms, 50), 1), "p95": round(percentile(ms, 95), 1)}


def recall(retriever: Retriever, index: LanceVectorIndex, vectors: np.ndarray[Any, Any], ids: list[str],
           queries: np.ndarray[Any, Any]) -> float:
    hits = []
    cfg = retriever.config
    position = {chunk_id: i for i, chunk_id in enumerate(ids)}
    for q in queries:
        exact = vectors @ q
        tenth = np.sort(exact)[-10]  # a hit counts when it is as close as the 10th nearest (ties: duplicate chunks)
        # the vector side exactly as retrieval runs it (both levels, `candidates` deep); its best 10 count
        found = index.search("default", SearchRequest(text="", vector=q, candidates=cfg.candidates,
                                                      levels=(Level.CHUNK, Level.SECTION), keyword=False))
        hits.append(sum(exact[position[h.chunk_id]] >= tenth - 1e-6 for h in found.dense[:10]) / 10)
    return round(float(np.mean(hits)), 4)


def one_size(settings: Settings, size: int, texts: list[str], vectors: np.ndarray[Any, Any], qs: list[str],
             qv: np.ndarray[Any, Any], path: Path) -> dict[str, Any]:
    t, v = rows_for(size, texts, vectors)
    index = LanceVectorIndex(path, v.shape[1])
    retriever = Retriever(wiring.query_embedder(settings), index, wiring.retrieval_config(settings))
    stop = threading.Event()
    maintenance: list[float] = []

    def upkeep() -> None:
        while not stop.wait(2.0):
            started = time.perf_counter()
            index.maintain()
            maintenance.append(time.perf_counter() - started)

    worker = threading.Thread(target=upkeep, daemon=True)
    worker.start()
    started = time.perf_counter()
    tail_from, tail_started = int(size * 0.9) // BATCH * BATCH, 0.0
    for i in range(0, size, BATCH):
        if i == tail_from:
            tail_started = time.perf_counter()
        index.upsert(records(t[i:i + BATCH], v[i:i + BATCH], i))
    fill_s = time.perf_counter() - started
    tail_s = time.perf_counter() - tail_started
    stop.set()
    worker.join()
    before = time.perf_counter()
    index.maintain(force=True)
    final_maintain_s = time.perf_counter() - before
    ids = [r.chunk_id for r in records(t, v, 0)]
    result: dict[str, Any] = {
        "rows": index.count(), "ann_index": "vector" in lance_maintenance.indexed_columns(index._table),
        "write_rows_per_s": round(size / fill_s, 1),
        "write_rows_per_s_last_tenth": round((size - tail_from) / tail_s, 1),
        "maintenance_runs_during_fill": len(maintenance),
        "maintenance_s_p50_max": [round(percentile(maintenance, 50), 2), round(max(maintenance, default=0), 2)],
        "final_maintenance_s": round(final_maintain_s, 2),
        "search_ms_maintained": timed_searches(retriever, qs, qv),
    }
    rng = np.random.default_rng(11)
    sample = v[rng.choice(len(v), 200, replace=False)]
    result["recall@10"] = {"questions": recall(retriever, index, v, ids, qv),
                           "chunks": recall(retriever, index, v, ids, sample)}
    extra_t, extra_v = rows_for(size + 100, texts, vectors, seed=99)
    index.upsert(records(extra_t[size:], extra_v[size:], size))  # ~2 s of ingest at ~50 chunks/s
    result["search_ms_100_new_rows"] = timed_searches(retriever, qs, qv)
    runner = threading.Thread(target=index.maintain, kwargs={"force": True})
    runner.start()
    result["search_ms_during_maintenance"] = timed_searches(retriever, qs, qv)
    runner.join()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real-dir", type=Path, required=True)
    ap.add_argument("--sizes", default="2000,20000,200000")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    os.environ["RAGBUS_DATA_DIR"] = str(args.real_dir)
    settings = Settings()
    texts, vectors = real_rows(settings)
    qs = questions()
    qv = wiring.build_embedder(settings).embed(qs)
    report: dict[str, Any] = {"real_chunks": len(vectors), "ann_min_rows": lance_maintenance.ANN_MIN_ROWS, "sizes": {}}
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="ragbus-scale-") as tmp:
            report["sizes"][size] = one_size(settings, size, texts, vectors, qs, qv, Path(tmp))
        if not args.json:
            print(size, json.dumps(report["sizes"][size]), flush=True)
    report |= run_facts()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
