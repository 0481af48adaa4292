"""Retrieval under document permissions (issue 25): latency p50/p95 and recall@10 at 20,000 documents when 1%,
10% or 100% of them are visible to the asker, beside the same queries without ACLs, in one run on one index.

    python bench/acl.py [--set bench/out/sets/packages-20k] [--cache bench/out/vectors.sqlite] [--json OUT]

The set's rows go through the pipeline's own stage functions without Kafka, as bench/retrieval.py builds an
index (chunker -> embedder -> indexer into LanceDB); vectors come from the embedding cache, opened read-only
(a text the cache lacks is embedded and kept in memory only). On the way into the index every document's
entries are stamped with `document_tokens(tenant, principals) + (PUBLIC,)`, where principals are
`group:everyone` (every document), `group:ten` (10% of them), `group:one` (1%) and `group:other`. So, on one
index, a query's visibility tokens choose what it may read:

- `no acl clause`: the acl prefilter taken out of the query (the index as before issue 25);
- `no ACL (PUBLIC)`: `visible=PUBLIC_ONLY`, what every query of a tenant without ACLs runs today;
- `100%` / `10%` / `1%`: `query_tokens(tenant, ["group:everyone" | "group:ten" | "group:one"], deny_unlisted=True)`.

Each query runs through `retrieval.retriever.Retriever.retrieve(..., visible=...)` under every variant in turn
(the order rotates per query, so a load spike on a shared machine hits all variants alike). Recall@10 is
measured against an exact search over the visible documents only: the same Retriever and fusion over an index
whose dense side is an exact numpy cosine top-k over the visible entries' vectors (its keyword side is the
index's BM25 with the same prefilter; checked separately against an unfiltered BM25 search filtered
afterwards). The dense side alone is also compared, chunk for chunk, with that exact top-k.

Everything is measured twice on the same table: first with exact vector search (the table's ANN index held
back), then after maintenance built the IVF-HNSW-SQ index it builds at ANN_MIN_ROWS rows
(infra/stores/lance_maintenance.py), since a prefilter over an ANN index can find fewer than k when few rows
pass it. The built table (before its ANN index) is kept in bench/out/lab/ and copied for each run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAGBUS_EMBEDDER_ONNX_DIR", str(Path(__file__).resolve().parent.parent / ".ragbus" / "models"))

from bench.report import run_facts
from chunking.splitter import Chunker
from consumers.indexer import Indexer
from infra.models.embedder import load_tokenizer
from infra.ops.metrics import Metrics
from infra.settings import Settings
from infra.stores import lance, lance_maintenance
from infra.stores.lance import LanceVectorIndex
from infra.stores.sqlite import SqliteDocumentStore
from kernel.permissions import PUBLIC, PUBLIC_ONLY, document_tokens, query_tokens
from kernel.ports import Candidates, ChunkRecord, SearchHit, SearchRequest
from ragbus import wiring
from ragbus.client import row_event
from ragbus.evaluate import EvalSet, load_set, percentile
from retrieval.evaluation import documents
from retrieval.retriever import Retriever
from schemas.topics import TOPICS
from streams.chunker import chunk_event
from streams.embedder import CachedEmbedder, embed_events

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
TENANT = "bench"
K = 10
#: Share of the documents each asker's group may read; every document also carries group:other.
GROUPS = {"100%": ("group:everyone", 1.0), "10%": ("group:ten", 0.10), "1%": ("group:one", 0.01)}
#: What is stamped on the entries (principals_of, Stamping): change it when they change, and the kept index goes.
STAMPING = "acl-1: everyone/ten/one/other + PUBLIC"
NO_CLAUSE, PUBLIC_VARIANT = "no acl clause", "no ACL (PUBLIC)"


def corpus_rows(eval_set: EvalSet) -> list[dict[str, Any]]:
    with eval_set.corpus.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


class ReadOnlyCache:
    """The embedding cache (streams/embedder.py's EmbeddingCache port) read from a file opened read-only: the
    cache another tree filled is never written; what it lacks is kept in memory for this run."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        self._mine: dict[str, bytes] = {}

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        out = {k: self._mine[k] for k in keys if k in self._mine}
        wanted = [k for k in keys if k not in out]
        for start in range(0, len(wanted), 500):
            part = wanted[start:start + 500]
            rows = self._conn.execute(f"SELECT key, vector FROM embeddings WHERE key IN ({','.join('?' * len(part))})",
                                      part)
            out.update((key, bytes(vec)) for key, vec in rows)
        return out

    def put_many(self, items: Mapping[str, bytes]) -> None:
        self._mine.update(items)

    def close(self) -> None:
        self._conn.close()


def principals_of(document_id: str) -> list[str]:
    """The groups that may read a document: a seeded, uniform draw per document id."""
    draw = int(hashlib.sha256(f"ragbus-acl\x1f{document_id}".encode()).hexdigest()[:12], 16) / 16 ** 12
    return ["group:other", *(group for group, share in GROUPS.values() if draw < share)]


class Stamping:
    """The index as the indexer sees it, stamping each entry with its document's visibility tokens (plus PUBLIC,
    so `visible=PUBLIC_ONLY` reads every document: the no-ACL variant on the same table)."""

    def __init__(self, inner: LanceVectorIndex) -> None:
        self._inner = inner

    def upsert(self, chunks: Sequence[ChunkRecord]) -> Any:
        return self._inner.upsert([replace(c, acl=(*document_tokens(c.tenant, principals_of(c.document_id)), PUBLIC))
                                   for c in chunks])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def build(settings: Settings, directory: Path, cache: Path, home: Path) -> dict[str, Any]:
    """The set indexed through the chunker, embedder and indexer stage functions into `home`, its full-text
    indexes folded but no ANN index built."""
    eval_set = load_set(directory)
    model = wiring.passage_embedder(settings)
    cached = CachedEmbedder(model, ReadOnlyCache(cache))
    chunker = Chunker(load_tokenizer(settings.embedder.model), settings.chunker.size_tokens,
                      settings.chunker.overlap_tokens)
    store = SqliteDocumentStore(home / "store.sqlite")
    index = LanceVectorIndex(home / "lance", model.dim)
    indexer = Indexer(Stamping(index), store, Metrics(), model.dim)
    started = time.perf_counter()
    rows = corpus_rows(eval_set)
    for start in range(0, len(rows), 256):
        events = [row_event(settings, store, r, tenant=TENANT, correlation="bench", source=f"{directory}:{n}")
                  for n, r in enumerate(rows[start:start + 256], start + 1)]
        produced: list[Any] = [o.event for ev in events for o in chunk_event(ev, chunker, store.get_content)
                    if o.topic is TOPICS.chunks]
        embedded: list[Any] = [o.event for outs in embed_events(produced, cached) if not isinstance(outs, Exception)
                    for o in outs if o.topic is TOPICS.embedded]
        for result in indexer.handle(embedded):
            if isinstance(result, Exception):
                raise result
        print(f"  indexed {min(start + 256, len(rows))}/{len(rows)} documents ({cached.computed} embedded, "
              f"{time.perf_counter() - started:.0f}s)", file=sys.stderr, flush=True)
    exact_maintenance(index)
    facts = {"documents": len(rows), "rows": index._table.count_rows(), "embedded": cached.computed,
             "build_s": round(time.perf_counter() - started, 1)}
    index.close()
    return facts


def exact_maintenance(index: LanceVectorIndex) -> None:
    """The indexer's maintenance (fold full-text indexes, tenant bitmap) without building the ANN index."""
    keep = lance_maintenance.ANN_MIN_ROWS
    lance_maintenance.ANN_MIN_ROWS = 10 ** 12
    try:
        index.maintain(force=True)
    finally:
        lance_maintenance.ANN_MIN_ROWS = keep


def kept(settings: Settings, directory: Path, cache: Path) -> tuple[Path, dict[str, Any]]:
    code = b"".join(p.read_bytes() for p in sorted([*ROOT.glob("chunking/*.py"), ROOT / "streams/chunker.py",
                                                    ROOT / "consumers/indexer.py", ROOT / "infra/stores/lance.py",
                                                    ROOT / "kernel/permissions.py"]))
    recipe = (f"{settings.embedder.model}|{settings.chunker.size_tokens}|{settings.chunker.overlap_tokens}|"
              f"{STAMPING}|{hashlib.sha256(code).hexdigest()}")
    home = OUT / "lab" / f"acl-{directory.name}-{hashlib.sha256(recipe.encode()).hexdigest()[:8]}"
    if (home / "built.json").exists():
        return home, json.loads((home / "built.json").read_text())
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    facts = build(settings, directory, cache, home)
    (home / "built.json").write_text(json.dumps(facts))
    return home, facts


class ExactDense:
    """The reference: the index with its dense side replaced by an exact cosine top-k over the entries the
    query may read (numpy over every stored vector); keyword side and section reads are the index's own."""

    def __init__(self, inner: LanceVectorIndex) -> None:
        self._inner = inner
        table = inner._table.to_arrow()
        self._rows = table.drop(["vector", "acl", "tenant", "heading", "source", "meta"])
        column = table["vector"].combine_chunks()
        vectors = np.asarray(column.flatten(), dtype=np.float32).reshape(len(column), -1)
        self._unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        self._acl = [set(a) for a in table["acl"].to_pylist()]
        self._tenant = np.asarray(table["tenant"].to_pylist())
        self._level = np.asarray(table["level"].to_pylist())
        self._masks: dict[tuple[str, ...], np.ndarray] = {}

    def mask(self, tenant: str, visible: tuple[str, ...], levels: Sequence[Any]) -> np.ndarray:
        if visible not in self._masks:
            allowed = set(visible)
            self._masks[visible] = np.asarray([not a.isdisjoint(allowed) for a in self._acl])
        levels_ok = np.isin(self._level, [lv.value for lv in levels])
        return np.asarray(self._masks[visible] & (self._tenant == tenant) & levels_ok, dtype=bool)

    def dense(self, tenant: str, request: SearchRequest, limit: int) -> list[SearchHit]:
        q = np.asarray(request.vector, dtype=np.float32)
        sims = self._unit @ (q / np.linalg.norm(q))
        where = np.flatnonzero(self.mask(tenant, request.visible, request.levels))
        top = where[np.argsort(-sims[where], kind="stable")[:limit]]
        rows = self._rows.take(top).append_column("_score", [sims[top].astype(np.float64)])
        return lance._hits(rows, "_score")

    def search(self, tenant: str, request: SearchRequest) -> Candidates:
        keyword = self._inner.search(tenant, replace(request, dense=False)).keyword if request.keyword else []
        dense = self.dense(tenant, request, request.candidates * len(request.levels)) if request.dense else []
        return Candidates(dense, keyword)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class NoClause:
    """Takes the acl prefilter out of the index's query while in use (the query as before issue 25)."""

    def __enter__(self) -> None:
        self._readable = lance._readable
        lance._readable = lambda visible: "TRUE"

    def __exit__(self, *exc: object) -> None:
        lance._readable = self._readable


def variants() -> dict[str, tuple[str, ...]]:
    return {NO_CLAUSE: PUBLIC_ONLY, PUBLIC_VARIANT: PUBLIC_ONLY,
            **{name: query_tokens(TENANT, [group], deny_unlisted=True) for name, (group, _) in GROUPS.items()}}


def visible_docs(corpus: list[dict[str, Any]]) -> dict[str, set[str]]:
    every = {str(r["id"]) for r in corpus}
    out = {NO_CLAUSE: every, PUBLIC_VARIANT: every}
    for name, (group, _) in GROUPS.items():
        out[name] = {d for d in every if group in principals_of(d)}
    return out


def measure(retriever: Retriever, reference: Retriever, exact: ExactDense, index: LanceVectorIndex,
            queries: list[tuple[str, str]], vectors: dict[str, Any], judged: dict[str, dict[str, float]],
            readable: dict[str, set[str]], settings: Settings) -> dict[str, Any]:
    names = list(variants())
    tokens = variants()
    for _, text in queries:  # warm: every query under every variant once, untimed
        for name in names:
            with NoClause() if name == NO_CLAUSE else _null():
                retriever.retrieve(TENANT, text, K, visible=tokens[name])
    latency: dict[str, list[float]] = {n: [] for n in names}
    got: dict[str, dict[str, list[str]]] = {n: {} for n in names}
    for i, (qid, text) in enumerate(queries):
        for name in names[i % len(names):] + names[:i % len(names)]:
            with NoClause() if name == NO_CLAUSE else _null():
                t = time.perf_counter()
                hits = retriever.retrieve(TENANT, text, K, visible=tokens[name])
                latency[name].append((time.perf_counter() - t) * 1000)
            got[name][qid] = documents([h.document_id for h in hits])[:K]
    candidates = settings.retrieval.candidates
    out: dict[str, Any] = {}
    for name in names:
        ref_recall, short, leaks, dense_recall, dense_short, qrels_hits, qrels_n = [], 0, 0, [], 0, 0, 0
        for qid, text in queries:
            with NoClause() if name == NO_CLAUSE else _null():
                want = documents([h.document_id for h in reference.retrieve(TENANT, text, K, visible=tokens[name])])[:K]
            mine = got[name][qid]
            leaks += sum(d not in readable[name] for d in mine)
            ref_recall.append(len(set(mine) & set(want)) / len(want) if want else float(not mine))
            short += len(mine) < len(want)
            request = SearchRequest(text, vectors[text], candidates, keyword=False, visible=tokens[name])
            with NoClause() if name == NO_CLAUSE else _null():
                found = [h.chunk_id for h in index.search(TENANT, request).dense[:K]]
            truth = [h.chunk_id for h in exact.dense(TENANT, request, candidates)[:K]]
            dense_recall.append(len(set(found) & set(truth)) / len(truth) if truth else float(not found))
            dense_short += len(found) < len(truth)
            relevant = {d for d, s in judged[qid].items() if s > 0 and d in readable[name]}
            if relevant:
                qrels_n += 1
                qrels_hits += bool(relevant & set(mine))
        out[name] = {
            "visible_documents": len(readable[name]),
            "p50_ms": round(percentile(latency[name], 50), 1), "p95_ms": round(percentile(latency[name], 95), 1),
            "recall@10_vs_exact_visible": round(float(np.mean(ref_recall)), 4),
            "queries_fewer_results_than_exact": short,
            "dense_recall@10_vs_exact": round(float(np.mean(dense_recall)), 4),
            "dense_queries_fewer_than_exact": dense_short,
            "qrels_recall@10_where_answer_visible": round(qrels_hits / qrels_n, 4) if qrels_n else None,
            "queries_with_answer_visible": qrels_n,
            "hits_not_readable": leaks}
    base = out[NO_CLAUSE]["p95_ms"]
    for r in out.values():
        r["p95_vs_no_clause"] = round(r["p95_ms"] / base, 2)
    return out


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def keyword_check(index: LanceVectorIndex, queries: list[tuple[str, str]], vectors: dict[str, Any],
                  readable: set[str], visible: tuple[str, ...], candidates: int) -> dict[str, Any]:
    """Whether the prefiltered BM25 top-k equals an unfiltered BM25 search (deep) filtered afterwards."""
    same, compared = 0, 0
    for _, text in queries:
        pre = [h.chunk_id for h in index.search(TENANT, SearchRequest(text, vectors[text], candidates, dense=False,
                                                                        visible=visible)).keyword]
        with NoClause():
            deep = index.search(TENANT, SearchRequest(text, vectors[text], 5000, dense=False)).keyword
        post = [h.chunk_id for h in deep if h.document_id in readable][:candidates]
        if len(deep) < 5000 or len(post) >= candidates:  # the deep search saw every match, or enough of them
            compared += 1
            same += pre == post
    return {"queries_compared": compared, "identical_top_k": same}


def run(settings: Settings, directory: Path, cache: Path) -> dict[str, Any]:
    eval_set = load_set(directory)
    home, facts = kept(settings, directory, cache)
    corpus = corpus_rows(eval_set)
    readable = visible_docs(corpus)
    questions = CachedEmbedder(wiring.query_embedder(settings), ReadOnlyCache(cache))
    texts = [text for _, text in eval_set.queries]
    vectors = dict(zip(texts, questions.embed(texts), strict=True))
    config = wiring.retrieval_config(settings)
    report: dict[str, Any] = {"set": str(directory), "queries": len(texts), **facts,
                              "question_vectors_embedded": questions.computed, "phases": {}}
    with tempfile.TemporaryDirectory(prefix="ragbus-acl-") as tmp:
        shutil.copytree(home / "lance", Path(tmp) / "lance")
        index = LanceVectorIndex(Path(tmp) / "lance", wiring.passage_embedder(settings).dim)
        for phase in ("exact (no ANN index)", "IVF-HNSW-SQ ANN index"):
            if phase.startswith("IVF"):
                started = time.perf_counter()
                index.maintain(force=True)  # the indexer's maintenance: builds the ANN index at ANN_MIN_ROWS rows
                if "vector" not in lance_maintenance.indexed_columns(index._table):
                    report["phases"][phase] = f"not built: {index._table.count_rows()} rows"
                    break
                report["ann_build_s"] = round(time.perf_counter() - started, 1)
                index.close()
                index = LanceVectorIndex(Path(tmp) / "lance", wiring.passage_embedder(settings).dim)
            exact = ExactDense(index)
            retriever = Retriever(questions, index, config)
            reference = Retriever(questions, exact, config)
            print(f"  measuring: {phase}", file=sys.stderr, flush=True)
            report["phases"][phase] = measure(retriever, reference, exact, index, eval_set.queries, vectors,
                                              eval_set.judgements, readable, settings)
            report["phases"][phase]["keyword prefilter vs post-filter, 1%"] = keyword_check(
                index, eval_set.queries[:100], vectors, readable["1%"], variants()["1%"],
                settings.retrieval.candidates)
        index.close()
    return report | run_facts() | {"candidates": settings.retrieval.candidates}


def print_report(report: dict[str, Any]) -> None:
    print(f"{report['set']}: {report['documents']} documents, {report['rows']} index rows, {report['queries']} "
          f"queries, top {K}, candidates {report['candidates']}; {report['machine']}, {report['date']}")
    for phase, rows in report["phases"].items():
        print(f"\n{phase}")
        if isinstance(rows, str):
            print(rows)
            continue
        check = rows.pop("keyword prefilter vs post-filter, 1%", None)
        print("| visible to the asker | documents | p50 ms | p95 ms | p95 / no acl clause | recall@10 vs exact over "
              "visible | fewer than exact | dense recall@10 vs exact | dense fewer | qrels recall@10 (n) | "
              "unreadable hits |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for name, r in rows.items():
            print(f"| {name} | {r['visible_documents']} | {r['p50_ms']} | {r['p95_ms']} | {r['p95_vs_no_clause']} | "
                  f"{r['recall@10_vs_exact_visible']:.4f} | {r['queries_fewer_results_than_exact']} | "
                  f"{r['dense_recall@10_vs_exact']:.4f} | {r['dense_queries_fewer_than_exact']} | "
                  f"{r['qrels_recall@10_where_answer_visible']} ({r['queries_with_answer_visible']}) | "
                  f"{r['hits_not_readable']} |")
        if check:
            rows["keyword prefilter vs post-filter, 1%"] = check
            print(f"keyword side at 1%: prefiltered BM25 top-k identical to deep unfiltered BM25 filtered afterwards "
                  f"in {check['identical_top_k']}/{check['queries_compared']} queries")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", type=Path, default=OUT / "sets" / "packages-20k")
    ap.add_argument("--cache", type=Path, default=OUT / "vectors.sqlite", help="embedding cache, opened read-only")
    ap.add_argument("--json", type=Path, metavar="OUT")
    args = ap.parse_args()
    report = run(Settings(), args.set, args.cache)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report))


if __name__ == "__main__":
    main()
