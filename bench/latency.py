"""Interactive query latency through the bus: one retrieve-only query at a time, from a long-lived client.

    python bench/latency.py [--chunks 20000] [--queries 100] [--burst 100] [--data-dir DIR] [--json]

1. Fills a data directory with `--chunks` chunks (bench/corpus.py; reused when `--data-dir` already holds
   them): real ones as far as pydocs-faq-dev goes (~40k; a document that would overshoot is left out), topped
   up to exactly `--chunks` with synthetic neighbours of them (`synthetic_fill`; for 200k), and starts the
   stack on it as `ragbus up` does (local broker, every stage a process).
2. A long-lived client (one producer, one reader of the answer topics: `ragbus.client.QueryClient`)
   publishes a retrieve-only query (the FAQ questions of pydocs-faq-dev, in turn) and waits for its
   answer event, `--queries` times one after another, after 5 warm-up queries.
3. Then `--burst` queries at once: how many queries per second the answerer gets through when they
   share batches.
4. With `--during-ingest DOCS`: the one-at-a-time queries again while DOCS new corpus sections, published
   at once, go through the pipeline (the embedder busy on both cores, index upkeep folding new rows).

Round trip = publish -> answer event received by the client. `retrieve_ms` is the answerer's own time
to embed the question and search (from the answer event); the rest is the bus, the document store and
the client.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.corpus import fresh_documents, percentile, preload, questions, rss_mb, synthetic_fill
from bench.report import emit, run_facts
from engine.clients import EventProducer
from infra.models.embedder import embedding_dim
from infra.ops import logs
from infra.settings import Settings
from ragbus import wiring
from ragbus.client import QueryClient, publish
from ragbus.supervisor import Stack
from schemas.events import QueryRequested


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(percentile(values, 50), 1), "p95": round(percentile(values, 95), 1),
            "p99": round(percentile(values, 99), 1), "max": round(max(values), 1)}


def synthetic_count(settings: Settings) -> int:
    index = wiring.build_index(settings, embedding_dim(settings.embedder.model))
    return int(index._table.count_rows("source = 'synthetic'"))  # type: ignore[attr-defined]  # LanceDB directly


def one_at_a_time(client: QueryClient, texts: list[str], n: int) -> tuple[list[float], list[float], list[float]]:
    rtt, retrieve, answer_total = [], [], []
    for i in range(n):
        q = QueryRequested(text=texts[i % len(texts)], retrieve_only=True, top_k=5)
        started = time.perf_counter()
        got = client.ask([q], 30).get(q.query_id)
        elapsed = (time.perf_counter() - started) * 1000
        if got is None:
            raise SystemExit(f"query {i} got no answer within 30 s")
        rtt.append(elapsed)
        retrieve.append(got.timings.retrieve_ms)
        answer_total.append(got.timings.total_ms)
    return rtt, retrieve, answer_total


def during_ingest(settings: Settings, client: QueryClient, texts: list[str], n: int, documents: int
                  ) -> dict[str, object]:
    """`n` queries one at a time while `documents` new corpus sections, published at once, are ingested."""
    docs = list(itertools.islice(fresh_documents(), documents))
    publish(settings, EventProducer(settings), docs)
    started = time.perf_counter()
    rtt, retrieve, _ = one_at_a_time(client, texts, n)
    return {"documents_published": documents, "queries_s": round(time.perf_counter() - started, 1),
            "round_trip_ms": summary(rtt), "retrieve_ms": summary(retrieve)}


def measure(settings: Settings, n: int, burst: int, ingest_docs: int) -> dict[str, object]:
    texts = questions()
    with Stack(settings) as stack, QueryClient(stack.child_settings()) as client:
        for i in range(5):  # warm-up: model loads, group joins, first fetches
            q = QueryRequested(text=texts[i], retrieve_only=True)
            if not client.ask([q], 120):
                raise SystemExit("the stack did not answer the warm-up query within 120 s")
        rtt, retrieve, answer_total = one_at_a_time(client, texts, n)
        batch = [QueryRequested(text=texts[i % len(texts)], retrieve_only=True) for i in range(burst)]
        started = time.perf_counter()
        answered = client.ask(batch, 300)
        burst_s = time.perf_counter() - started
        memory = {name: rss_mb(pid) for name, pid in stack.pids().items()}
        ingest = during_ingest(stack.child_settings(), client, texts, n, ingest_docs) if ingest_docs else None
    return {"round_trip_ms": summary(rtt), "retrieve_ms": summary(retrieve), "answerer_total_ms": summary(answer_total),
            "bus_and_store_ms_p50": round(percentile([a - b for a, b in zip(rtt, retrieve, strict=True)], 50), 1),
            "burst": {"queries": burst, "answered": len(answered), "seconds": round(burst_s, 2),
                      "queries_per_s": round(len(answered) / burst_s, 1)},
            "rss_mb_now_peak": memory, **({"during_bulk_ingest": ingest} if ingest else {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", type=int, default=20_000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--burst", type=int, default=100)
    ap.add_argument("--during-ingest", type=int, default=0, metavar="DOCS",
                    help="then the same queries again while DOCS new corpus sections, published at once, are ingested")
    ap.add_argument("--data-dir", type=Path, help="reuse (or create) this data directory; default: a temporary one")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    os.environ.pop("RAGBUS_KAFKA_BOOTSTRAP_SERVERS", None)
    os.environ.setdefault("RAGBUS_LOG_LEVEL", "WARNING")
    with tempfile.TemporaryDirectory(prefix="ragbus-latency-") as tmp:
        data = args.data_dir or Path(tmp)
        os.environ["RAGBUS_DATA_DIR"] = str(data)
        settings = Settings()
        logs.configure(settings.log_level, settings.log_format, quiet_clients=True)
        say = (lambda _: None) if args.json else print
        chunks = preload(settings, args.chunks, say=say)
        if chunks < args.chunks:
            chunks = synthetic_fill(settings, args.chunks, say=say)
        result = {"chunks": chunks, "synthetic_chunks": synthetic_count(settings), "queries": args.queries,
                  "embedder": settings.embedder.backend,
                  **measure(settings, args.queries, args.burst, args.during_ingest),
                  **run_facts()}
    emit(result, args.json)


if __name__ == "__main__":
    main()
