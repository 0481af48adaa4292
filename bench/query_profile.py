"""Where `retrieve_ms` goes at N documents: the answerer's retrieval, in process, stage by stage, and a profile.

    python bench/query_profile.py INDEX_DIR SET_DIR [--repeat 3] [--profile OUT.prof] [--json]

INDEX_DIR is a set's index as bench/retrieval.py keeps it (bench/out/lab/<set>-<hash>, holding `lance/`) or a
stack's data directory (with `--tenant`, the tenant `ragbus eval --tenant` ingested the set into),
SET_DIR the set itself (its queries.jsonl), e.g. bench/out/lab/packages-20k-* and bench/out/sets/packages-20k.
The question vectors are embedded once first (the answerer embeds each question: that cost is reported apart).
Every query then runs through `Retriever.retrieve` with the configured settings, `--repeat` times, timed whole
and split into: the index's search call (both retrievers, both levels), the newest-version filter and fusion,
and the section look-up of `_select`. CPU seconds of the process are reported beside wall time.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAGBUS_EMBEDDER_ONNX_DIR", str(Path(__file__).resolve().parent.parent / ".ragbus" / "models"))

from bench.report import emit, run_facts
from infra.settings import Settings
from infra.stores.lance import LanceVectorIndex
from ragbus import wiring
from ragbus.evaluate import load_set, percentile
from retrieval.retriever import Retriever

TENANT = "bench"


class Timed:
    """Wraps the index: the time of its search and section calls, per query."""

    def __init__(self, index: LanceVectorIndex) -> None:
        self._index = index
        self.search_s = 0.0
        self.sections_s = 0.0

    def search(self, *args: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return self._index.search(*args, **kw)
        finally:
            self.search_s += time.perf_counter() - t

    def section_chunks(self, *args: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return self._index.section_chunks(*args, **kw)
        finally:
            self.sections_s += time.perf_counter() - t


class Vectors:
    """The question vectors, embedded once."""

    def __init__(self, embedder: Any, texts: list[str]) -> None:
        started = time.perf_counter()
        self._vectors = dict(zip(texts, embedder.embed(texts), strict=True))
        self.embed_ms_each = (time.perf_counter() - started) * 1000 / max(len(texts), 1)

    def embed(self, texts: list[str]) -> list[Any]:
        return [self._vectors[t] for t in texts]


def dist(values: list[float]) -> dict[str, float]:
    return {"p50": round(percentile(values, 50), 2), "p95": round(percentile(values, 95), 2)}


def _parts(table: Any, name: str) -> int | None:
    """How many pieces (the index and its deltas) a search of this index reads; None when there is no index."""
    stats = table.index_stats(name)
    return None if stats is None else int(stats.num_indices)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("index_dir", type=Path)
    ap.add_argument("set_dir", type=Path)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--tenant", default=TENANT, help="the tenant the set was ingested into (a stack's data "
                    "directory: the one `ragbus eval --tenant` used)")
    ap.add_argument("--profile", type=Path, help="write a cProfile of the timed queries here")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    settings = Settings()
    texts = [text for _, text in load_set(args.set_dir).queries]
    index = LanceVectorIndex(args.index_dir / "lance", wiring.passage_embedder(settings).dim)
    timed = Timed(index)
    vectors = Vectors(wiring.query_embedder(settings), texts)
    retriever = Retriever(vectors, timed, wiring.retrieval_config(settings))  # type: ignore[arg-type]
    for text in texts:  # warm the index's caches
        retriever.retrieve(args.tenant, text, args.top_k)
    total, search, sections = [], [], []
    profiler = cProfile.Profile() if args.profile else None
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    for _ in range(args.repeat):
        for text in texts:
            timed.search_s = timed.sections_s = 0.0
            t = time.perf_counter()
            if profiler:
                profiler.enable()
            retriever.retrieve(args.tenant, text, args.top_k)
            if profiler:
                profiler.disable()
            total.append((time.perf_counter() - t) * 1000)
            search.append(timed.search_s * 1000)
            sections.append(timed.sections_s * 1000)
    n = len(total)
    cpu_ms = (time.process_time() - cpu0) * 1000 / n
    if profiler and args.profile:
        profiler.dump_stats(str(args.profile))
    rest = [t - s - c for t, s, c in zip(total, search, sections, strict=True)]
    table = index._table  # type: ignore[attr-defined]  # LanceDB directly: how the index is laid out
    emit({"rows": index.count(args.tenant), "table_rows": table.count_rows(),
          "vector_index_parts": _parts(table, "vector_idx"), "text_index_parts": _parts(table, "text_idx"),
          "queries": n, "retrieve_ms_without_embedding": dist(total),
          "index_search_ms": dist(search), "section_lookup_ms": dist(sections), "filter_and_fusion_ms": dist(rest),
          "process_cpu_ms_per_query": round(cpu_ms, 2),
          "wall_ms_per_query": round((time.perf_counter() - wall0) * 1000 / n, 2),
          "question_embedding_ms_each_batched": round(vectors.embed_ms_each, 2),
          "candidates": settings.retrieval.candidates, **run_facts()}, args.json)


if __name__ == "__main__":
    main()
