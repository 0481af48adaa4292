"""Freshness: seconds from publishing a document to finding it with a query, at a steady rate below capacity.

    python bench/freshness.py [--preload 2000] [--chunk-rate R | --capacity-docs 80] [--fraction 0.5]
                              [--seconds 60] [--probe-every 4] [--json]
    python bench/freshness.py --idle-probes 10 [--preload 0] [--json]

1. Starts the stack (`ragbus up`'s processes, local broker) on a fresh data directory holding `--preload`
   real chunks (bench/corpus.py).
2. Capacity: publishes `--capacity-docs` corpus sections at once and times until all are indexed, in
   chunks/s (the embedder's unit of work: documents/s would depend on which sections came); the steady
   rate is `--fraction` of that (or `--chunk-rate` chunks/s when given).
3. Steady phase: a publisher sends further corpus sections, paced by their chunks at that rate, for `--seconds`.
   Every document's `indexed` status is timed (publish -> status seen by the client). Every
   `--probe-every`-th document is also probed through the query path: once its `indexed` status arrives,
   retrieve-only queries filtered to that document, a round every 50 ms until one finds it (a write is
   searchable in other processes within LanceDB's 0.1 s read-consistency interval: this measures that it
   is, and how long the query takes); its freshness is publish -> that answer received, an upper bound on
   when it became searchable.

With `--idle-probes N` it measures only the idle case, from outside: N short documents one at a time, each
with a unique token, and retrieve-only queries for that token back to back until one cites the document;
once with the stack's own client settings and once as a plain librdkafka client (fetch wait 500 ms, its
default), since the local broker holds every fetch for its whole wait.

Reports p50/p95 of both, the rate offered and the rate achieved, where the time goes (publish -> each
stage's status: chunked, embedded, indexed), the same for documents of at most 16 chunks, and the slowest
documents with their sizes: one embedder takes documents in the order they come, so a short document that
arrives behind a long one waits for it. Targets (issue 13): searchable p50 <= 0.75 s and p95 <= 1.5 s at
half of ingest capacity.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.corpus import fresh_documents, percentile, preload
from bench.report import emit, run_facts
from chunking.splitter import Chunker
from engine.clients import EventProducer
from engine.tail import Tail
from infra.models.embedder import load_tokenizer
from infra.ops import logs
from infra.settings import Settings
from ragbus.client import QueryClient, publish, wait_final
from ragbus.supervisor import Stack
from schemas.events import ContentType, DocumentArrived, DocumentStatus, QueryRequested, Status
from schemas.topics import TOPICS, document_key

#: Pause between probe rounds: a client polling at 20 Hz. Probing from publication on, back to back, made the
#: benchmark itself a query load of tens of queries/s (more, the further the stack fell behind), which took
#: the cores from the embedder it was measuring.
PROBE_EVERY_S = 0.05
#: Documents up to this many chunks are reported apart: what a short document waits behind long ones.
SMALL_CHUNKS = 16


def capacity(settings: Settings, docs: list[DocumentArrived]) -> tuple[float, float]:
    """(documents/s, chunks/s) of `docs` published at once, until all are indexed."""
    with Tail(settings, TOPICS.status) as tail:
        started = time.perf_counter()
        publish(settings, EventProducer(settings), docs)
        final = wait_final(tail, docs, 600)
        elapsed = time.perf_counter() - started
    if len(final) < len(docs):
        raise SystemExit(f"capacity run: only {len(final)} of {len(docs)} documents indexed within 600 s")
    return len(docs) / elapsed, sum(st.chunks for st in final.values()) / elapsed


def chunk_counter(settings: Settings) -> Any:
    """How many chunks the pipeline will make of a document (the chunker's own settings and tokenizer)."""
    chunker = Chunker(load_tokenizer(settings.embedder.model), settings.chunker.size_tokens,
                      settings.chunker.overlap_tokens)
    return lambda doc: len(chunker.split(ContentType.TEXT, doc.text)[0])


class Prober:
    """Asks one filtered retrieve-only query per pending probe document, a round every PROBE_EVERY_S, until found."""

    def __init__(self, settings: Settings) -> None:
        self._client = QueryClient(settings)
        self._pending: dict[str, float] = {}
        self._lock = threading.Lock()
        self.found: dict[str, float] = {}
        self.stop = threading.Event()

    def add(self, document_id: str, published: float) -> None:
        with self._lock:
            self._pending[document_id] = published

    def run(self) -> None:
        while not self.stop.is_set() or self._pending:
            with self._lock:
                pending = dict(self._pending)
            if not pending:
                time.sleep(0.005)
                continue
            queries = {doc: QueryRequested(text="freshness probe", top_k=1, retrieve_only=True,
                                           filters={"document_id": doc}) for doc in pending}
            answers = self._client.ask(list(queries.values()), 10)
            now = time.perf_counter()
            self.stop.wait(PROBE_EVERY_S)
            for doc, q in queries.items():
                a = answers.get(q.query_id)
                if a is not None and a.citations:
                    self.found[doc] = now - pending[doc]
                    with self._lock:
                        self._pending.pop(doc, None)
            if self.stop.is_set() and time.perf_counter() - min(pending.values()) > 120:
                break  # a probe that never turns up must not hang the benchmark

    def close(self) -> None:
        self._client.close()


def idle_probes(settings: Settings, n: int, client_fetch_wait_ms: int | None = None) -> dict[str, Any]:
    """`n` short documents one at a time on the otherwise idle stack, each with a unique token: publish ->
    each status, and publish -> an answer to a retrieve-only query for the token that cites the document
    (queries back to back, each waiting for its answer). `client_fetch_wait_ms`: this client's own fetch wait
    (None: the stack's; librdkafka's default is 500 ms, what a plain outside client has)."""
    if client_fetch_wait_ms is not None:
        settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(
            update={"fetch_wait_max_ms": client_fetch_wait_ms})})
    producer = EventProducer(settings)
    found: list[float] = []
    stages: dict[str, list[float]] = {}
    with QueryClient(settings) as client, Tail(settings, TOPICS.status) as tail:
        for i in range(n):
            token = f"zq{uuid.uuid4().hex[:10]}"
            doc = DocumentArrived(document_id=f"idle-{token}", title=f"Idle probe {i}",
                                  text=f"A short note that mentions {token} once.", correlation_id="freshness")
            time.sleep(1.0)  # let the stack settle back to idle
            published, published_wall = time.perf_counter(), time.time()
            producer.send(TOPICS.documents, document_key(doc.tenant, doc.document_id), doc)
            producer.flush()
            seen: set[str] = set()
            while True:
                q = QueryRequested(text=token, top_k=3, retrieve_only=True)
                a = client.ask([q], 10).get(q.query_id)
                for st in tail.poll(0):
                    if st.document_id == doc.document_id and st.status.value not in seen:
                        seen.add(st.status.value)
                        stages.setdefault(st.status.value, []).append(st.occurred_at.timestamp() - published_wall)
                if a is not None and any(c.document_id == doc.document_id for c in a.citations):
                    found.append(time.perf_counter() - published)
                    break
                if time.perf_counter() - published > 30:
                    break
    return {"probes": n, "found": len(found), "publish_to_searchable_s": _dist(found),
            "client_fetch_wait_ms": client_fetch_wait_ms or settings.fetch_wait_ms(),
            "publish_to_status_s": {status: _dist(times) for status, times in stages.items()},
            "searchable_each_s": [round(f, 3) for f in found]}


def steady(settings: Settings, docs: Any, chunk_rate: float, seconds: float, probe_every: int) -> dict[str, Any]:
    """Documents paced by their chunks (the embedder's unit of work), so the load is the same fraction of
    capacity whatever the mix of short and long documents that happens to come next."""
    count = chunk_counter(settings)
    producer = EventProducer(settings)
    published: dict[str, float] = {}
    indexed: dict[str, float] = {}
    stages: dict[str, dict[str, float]] = {}  # status -> document -> seconds from publish to that status
    sizes: dict[str, int] = {}
    prober = Prober(settings)
    probes: set[str] = set()

    def seen(st: DocumentStatus) -> None:
        _seen(st, published, indexed, stages, sizes)
        if st.document_id in probes and st.document_id in indexed:
            probes.discard(st.document_id)
            prober.add(st.document_id, published[st.document_id])

    probe_thread = threading.Thread(target=prober.run, daemon=True)
    probe_thread.start()
    with Tail(settings, TOPICS.status) as tail:
        start = time.perf_counter()
        sent_chunks = 0
        for n, doc in enumerate(docs):
            due = start + sent_chunks / chunk_rate
            while (now := time.perf_counter()) < due:
                for st in tail.poll(min(0.05, due - now)):
                    seen(st)
            if now - start >= seconds:
                break
            producer.send(TOPICS.documents, document_key(doc.tenant, doc.document_id), doc)
            producer.flush()
            published[doc.document_id] = time.perf_counter()
            sent_chunks += count(doc)
            if n % probe_every == 0:
                probes.add(doc.document_id)
        offered_s = time.perf_counter() - start
        deadline = time.perf_counter() + 120
        while len(indexed) < len(published) and time.perf_counter() < deadline:
            for st in tail.poll(0.2):
                seen(st)
    prober.stop.set()
    probe_thread.join(150)
    prober.close()
    to_indexed = [indexed[d] - published[d] for d in indexed]
    to_found = list(prober.found.values())
    small = [indexed[d] - published[d] for d in indexed if sizes.get(d, 0) <= SMALL_CHUNKS]
    slowest = sorted(indexed, key=lambda d: published[d] - indexed[d])[:10]
    return {"published": len(published), "offered_docs_per_s": round(len(published) / offered_s, 2),
            "offered_chunks_per_s": round(sum(sizes.values()) / offered_s, 2),
            "indexed": len(indexed),
            "publish_to_indexed_s": _dist(to_indexed),
            # where the time goes: publish -> each stage's status (chunked, embedded, indexed)
            "publish_to_status_s": {status: _dist(list(times.values())) for status, times in stages.items()},
            f"publish_to_indexed_s_documents_of_at_most_{SMALL_CHUNKS}_chunks": _dist(small) | {"n": len(small)},
            "slowest": [{"s": round(indexed[d] - published[d], 2), "chunks": sizes.get(d)} for d in slowest],
            "probes": len(to_found),
            "publish_to_searchable_s": _dist(to_found)}


def _seen(st: DocumentStatus, published: dict[str, float], indexed: dict[str, float],
          stages: dict[str, dict[str, float]], sizes: dict[str, int]) -> None:
    if st.document_id not in published:
        return
    stages.setdefault(st.status.value, {}).setdefault(st.document_id, time.perf_counter() - published[st.document_id])
    if st.status is Status.INDEXED and st.document_id not in indexed:
        indexed[st.document_id] = time.perf_counter()
        sizes[st.document_id] = st.chunks


def _dist(values: list[float]) -> dict[str, float]:
    return {"p50": round(percentile(values, 50), 3), "p95": round(percentile(values, 95), 3),
            "max": round(max(values, default=float("nan")), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preload", type=int, default=2000, help="chunks in the index before measuring")
    ap.add_argument("--chunk-rate", type=float, help="chunks/s; default: --fraction of the measured capacity")
    ap.add_argument("--capacity-docs", type=int, default=80)
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--probe-every", type=int, default=4)
    ap.add_argument("--data-dir", type=Path)
    ap.add_argument("--idle-probes", type=int, default=0,
                    help="only this: N short documents one at a time on the idle stack, publish -> searchable, "
                         "with this client's fetch wait as the stack's and as a plain client's (500 ms)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    os.environ.pop("RAGBUS_KAFKA_BOOTSTRAP_SERVERS", None)
    os.environ.setdefault("RAGBUS_LOG_LEVEL", "WARNING")
    with tempfile.TemporaryDirectory(prefix="ragbus-freshness-") as tmp:
        os.environ["RAGBUS_DATA_DIR"] = str(args.data_dir or tmp)
        settings = Settings()
        logs.configure(settings.log_level, settings.log_format, quiet_clients=True)
        say = (lambda _: None) if args.json else print
        chunks = preload(settings, args.preload, say=say)
        docs = fresh_documents()
        with Stack(settings) as stack:
            child = stack.child_settings()
            warm = [next(docs)]
            if capacity(child, warm)[0] <= 0:
                raise SystemExit("warm-up failed")
            if args.idle_probes:
                emit({"preloaded_chunks": chunks, "stack_client": idle_probes(child, args.idle_probes),
                      "plain_client": idle_probes(child, args.idle_probes, 500), **run_facts()}, args.json)
                return
            cap = None
            if args.chunk_rate is None:
                cap = capacity(child, [next(docs) for _ in range(args.capacity_docs)])
                say(f"  capacity: {cap[0]:.2f} documents/s, {cap[1]:.1f} chunks/s")
            rate = args.chunk_rate or args.fraction * (cap[1] if cap else 0)
            result = steady(child, docs, rate, args.seconds, args.probe_every)
    report = {"preloaded_chunks": chunks, "capacity_docs_per_s": cap and round(cap[0], 2),
              "capacity_chunks_per_s": cap and round(cap[1], 1), "rate_chunks_per_s": round(rate, 2), **result,
              "embedder": settings.embedder.backend,
              **run_facts()}
    emit(report, args.json)


if __name__ == "__main__":
    main()
