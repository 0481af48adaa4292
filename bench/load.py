"""Open-loop query load through the bus, without and with a concurrent ingest of long documents.

    python bench/load.py [--rates 20,40,60] [--seconds 60] [--ingest-docs 1000] [--preload 3000]
                         [--data-dir DIR] [--json]

Only the public contract, from outside, with plain confluent-kafka clients (docs/subscribing.md,
docs/publishing.md): `query.requested` JSON on the queries topic, keyed by query id; answers read from the
answers topic; documents published as `document.arrived` JSON on the documents topic, their progress read
from the status topic. The run:

1. starts the stack as `ragbus up` does (local broker, every stage a process, each with its /metrics port) on a
   fresh data directory (or `--data-dir`) holding `--preload` real chunks (bench/corpus.py: the corpus sections
   in order, which takes in the FAQ sections the questions are judged against), and warms it up;
2. no ingest: for each rate of `--rates`, `--seconds` of retrieve-only queries (top 5; the 87 FAQ questions of
   pydocs-faq-dev in turn, each under a new query id) sent open loop: query i is sent at start + i/rate,
   whatever the answers do, by a thread of its own;
3. while ingesting: `--ingest-docs` long documents (the documentation's whole pages, FAQ pages excluded, under
   new ids and titles, so every chunk is really embedded) published at once, then the same rates again while
   they go through the pipeline. Should the backlog run low before a phase, another `--ingest-docs` are
   published first, so every phase of this part runs against a busy pipeline (each phase reports the chunks
   indexed during it and the documents still pending at its end).

Round trip = the query's scheduled send time -> its answer read by the client (measured from the schedule,
so a sender that falls behind is not hidden). Per phase and rate: sent, answered, duplicates, missing (no
answer within `--drain` seconds after the last send), round trip p50/p95/p99/max, the answer's own
`retrieve_ms` p50/p95, and quality: the share of answers that cite the question's judged FAQ section (among
questions whose section was preloaded). CPU seconds per process (bench/cpu_account.py's account) per phase.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.corpus import DATA, percentile, preload
from bench.cpu_account import Account, own_stack_with_metrics
from bench.report import run_facts
from infra.ops import logs
from infra.settings import Settings
from ragbus import wiring
from ragbus.supervisor import Stack
from schemas.topics import TOPICS, document_key

#: Pages shorter than this are not "long documents".
LONG_CHARS = 4000


class Reader:
    """Reads one topic from its beginning in a thread of its own (partitions assigned: no group join) and
    hands every JSON value to `on_event` with the time it was read."""

    def __init__(self, bootstrap: str, topic: str, on_event: Callable[[dict[str, Any], float], None]) -> None:
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"load-{uuid.uuid4().hex[:8]}",
                                   "enable.auto.commit": False,
                                   # the local broker holds a fetch for its whole wait (docs/subscribing.md)
                                   "fetch.wait.max.ms": 10})
        parts = self._consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        self._on_event = on_event
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for msg in self._consumer.consume(500, 0.05):
                if msg.error() is None and msg.value():
                    self._on_event(json.loads(msg.value()), time.perf_counter())
        self._consumer.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


class Answers:
    """Every answer read, by query id: when it was read, the answer, and how many times it came."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.first: dict[str, tuple[float, dict[str, Any]]] = {}
        self.count: dict[str, int] = {}

    def __call__(self, event: dict[str, Any], at: float) -> None:
        qid = event.get("query_id")
        if event.get("type") != "answer.generated" or not isinstance(qid, str):
            return
        with self.lock:
            self.count[qid] = self.count.get(qid, 0) + 1
            self.first.setdefault(qid, (at, event))


class Ingest:
    """Documents published and the final status of each (indexed or failed), from the status topic."""

    def __init__(self, producer: Producer, topic: str) -> None:
        self._producer, self._topic = producer, topic
        self.lock = threading.Lock()
        self.published: set[str] = set()
        self.final: dict[str, int] = {}  # document id -> chunks (indexed) or -1 (failed)
        self._pages = long_pages(uuid.uuid4().hex[:6])

    def __call__(self, event: dict[str, Any], at: float) -> None:
        doc = event.get("document_id")
        if (event.get("type") == "document.status" and event.get("about", "content") == "content"
                and event.get("status") in ("indexed", "failed") and doc in self.published):
            with self.lock:
                self.final.setdefault(doc, event.get("chunks", 0) if event["status"] == "indexed" else -1)

    def publish(self, n: int) -> None:
        for doc in itertools.islice(self._pages, n):
            self._producer.produce(self._topic, key=document_key(doc["tenant"], doc["document_id"]),
                                   value=json.dumps(doc))
            self._producer.poll(0)
            self.published.add(doc["document_id"])
        self._producer.flush(60)

    def progress(self) -> tuple[int, int]:
        """(documents pending, chunks indexed so far)."""
        with self.lock:
            return len(self.published) - len(self.final), sum(c for c in self.final.values() if c > 0)


def long_pages(run: str) -> Iterator[dict[str, Any]]:
    """The documentation's whole pages of at least LONG_CHARS characters, as `document.arrived` events, cycled
    under new ids and titles (the title is in every chunk's embedded text: nothing comes from a cache)."""
    with (DATA / "pages.jsonl").open() as fh:
        pages = [p for p in map(json.loads, fh) if len(p["text"]) >= LONG_CHARS]
    for rev in itertools.count(1):
        for p in pages:
            yield {"type": "document.arrived", "tenant": "default", "document_id": f"load-{run}-{rev}/{p['id']}"[:200],
                   "version": 1, "title": f"{p['title']} (rev {rev})", "content_type": "text/plain",
                   "text": p["text"], "correlation_id": "load"}


def judged_questions(settings: Settings) -> list[tuple[str, str | None]]:
    """(question, its judged section if that section is in the data directory's store, else None)."""
    with (DATA / "queries.jsonl").open() as fh:
        queries = {q["id"]: q["text"] for q in map(json.loads, fh)}
    judged: dict[str, str] = {}
    for line in (DATA / "qrels.tsv").read_text().splitlines()[1:]:
        qid, doc, _ = line.split("\t")
        judged[qid] = doc
    store = wiring.build_store(settings)
    return [(text, doc if (doc := judged.get(qid)) and store.get_document("default", doc) else None)
            for qid, text in queries.items()]


def send_open_loop(producer: Producer, topic: str, queries: list[dict[str, Any]], rate: float) -> list[float]:
    """Query i produced at start + i/rate, whatever has been answered; returns the scheduled times."""
    start = time.perf_counter() + 0.05
    due = [start + i / rate for i in range(len(queries))]
    for q, at in zip(queries, due, strict=True):
        while (wait := at - time.perf_counter()) > 0:
            time.sleep(min(wait, 0.005))
        producer.produce(topic, key=q["query_id"], value=json.dumps(q))
        producer.poll(0)
    producer.flush(30)
    return due


def phase(stack: Stack, producer: Producer, answers: Answers, questions: list[tuple[str, str | None]],
          rate: float, seconds: float, drain_s: float, account: Account) -> dict[str, Any]:
    topic = TOPICS.queries.physical(stack.child_settings().kafka.topic_prefix)
    run = uuid.uuid4().hex[:8]
    queries = [{"type": "query.requested", "tenant": "default", "query_id": f"load-{run}-{i}",
                "text": questions[i % len(questions)][0], "top_k": 5, "retrieve_only": True}
               for i in range(round(rate * seconds))]
    before = account.snapshot()
    due = send_open_loop(producer, topic, queries, rate)
    deadline = time.perf_counter() + drain_s
    ids = [q["query_id"] for q in queries]
    while time.perf_counter() < deadline and any(i not in answers.first for i in ids):
        time.sleep(0.05)
    cpu = Account.between(before, account.snapshot())
    time.sleep(1.0)  # a duplicate would come right behind its first copy
    rtt, retrieve, hits, judged, degraded = [], [], 0, 0, 0
    for i, (qid, at) in enumerate(zip(ids, due, strict=True)):
        if qid not in answers.first:
            continue
        read, answer = answers.first[qid]
        rtt.append((read - at) * 1000)
        retrieve.append(answer["timings"]["retrieve_ms"])
        degraded += bool(answer.get("degraded"))
        expected = questions[i % len(questions)][1]
        if expected is not None:
            judged += 1
            hits += any(c["document_id"] == expected for c in answer["citations"])
    answered = sum(1 for i in ids if i in answers.first)
    return {"rate": rate, "sent": len(ids), "answered": answered,
            "duplicates": sum(answers.count.get(i, 0) - 1 for i in ids if i in answers.first),
            "missing": len(ids) - answered, "degraded": degraded, "round_trip_ms": dist(rtt),
            "retrieve_ms": dist(retrieve), "cites_judged_section": f"{hits}/{judged}",
            "quality": round(hits / judged, 3) if judged else None,
            "cpu_s": {label: p["cpu_s"] for label, p in cpu["processes"].items()},
            "stack_cores_busy": cpu["stack_cores_busy"], "steps_cpu_s": cpu["steps_cpu_s"]}


def dist(values: list[float]) -> dict[str, float]:
    return {f"p{p}": round(percentile(values, p), 1) for p in (50, 95, 99)} | {
        "max": round(max(values, default=float("nan")), 1)}


#: The processes `--ingest-nice` renices (`ragbus up`'s labels): the ingest side but the embedder, which has its
#: own RAGBUS_EMBEDDER_NICE.
INGEST_SIDE = ("chunker", "indexer,status")


def renice(pids: list[int], nice: int | None, saved: dict[int, int]) -> None:
    """Every thread of `pids` to `nice` (Linux: a nice value is a thread's; threads started later inherit their
    creator's), keeping each thread's previous value in `saved`; `nice` None: back to the saved values."""
    for pid in pids:
        for tid in (int(t) for t in os.listdir(f"/proc/{pid}/task")):
            try:
                if nice is None:
                    os.setpriority(os.PRIO_PROCESS, tid, saved.pop(tid, os.getpriority(os.PRIO_PROCESS, pid)))
                else:
                    saved.setdefault(tid, os.getpriority(os.PRIO_PROCESS, tid))
                    os.setpriority(os.PRIO_PROCESS, tid, nice)
            except (ProcessLookupError, PermissionError):
                continue  # a thread that ended meanwhile; lowering a nice value needs CAP_SYS_NICE


def measure(settings: Settings, rates: list[float], seconds: float, ingest_docs: int, drain_s: float,
            say: Callable[[str], None], ingest_nice: int | None = None) -> dict[str, Any]:
    questions = judged_questions(settings)
    with Stack(settings) as stack:
        child = stack.child_settings()
        bootstrap = child.resolve_bootstrap()
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
        answers, ingest = Answers(), Ingest(producer, TOPICS.documents.physical(child.kafka.topic_prefix))
        readers = [Reader(bootstrap, TOPICS.answers.physical(child.kafka.topic_prefix), answers),
                   Reader(bootstrap, TOPICS.status.physical(child.kafka.topic_prefix), ingest)]
        account = Account(stack, child, settings.metrics_port)
        try:
            warm = phase(stack, producer, answers, questions, 5, 4, 120, account)
            if warm["missing"]:
                raise SystemExit(f"warm-up: {warm['missing']} of {warm['sent']} queries unanswered within 120 s")
            out: dict[str, Any] = {"no_ingest": [], "while_ingesting": []}
            for rate in rates:
                out["no_ingest"].append(phase(stack, producer, answers, questions, rate, seconds, drain_s, account))
                say(line("no ingest", out["no_ingest"][-1]))
            side = [pid for label, pid in stack.pids().items() if label in INGEST_SIDE]
            # with --ingest-nice, as configured and reniced in turn, the first of each pair alternating (ABBA...):
            # the ingest's start (the chunker splitting every document at once) falls in the first phase
            pairs = [(None,) if ingest_nice is None else (None, ingest_nice) if k % 2 == 0 else (ingest_nice, None)
                     for k in range(len(rates))]
            for rate, nice in ((r, n) for r, pair in zip(rates, pairs, strict=True) for n in pair):
                if ingest.progress()[0] < ingest_docs // 2:
                    ingest.publish(ingest_docs)
                    time.sleep(5)  # the chunker has split the first documents: the embedder is busy
                pending_before, chunks_before = ingest.progress()
                saved: dict[int, int] = {}
                if nice is not None:
                    renice(side, nice, saved)
                result = phase(stack, producer, answers, questions, rate, seconds, drain_s, account)
                if nice is not None:
                    renice(side, None, saved)
                pending, chunks = ingest.progress()
                result["ingest"] = {"documents_published": len(ingest.published), "pending_at_start": pending_before,
                                    "pending_at_end": pending, "chunks_indexed_during": chunks - chunks_before,
                                    "chunker_indexer_nice": "as configured" if nice is None else nice}
                out["while_ingesting"].append(result)
                say(line("while ingesting" + ("" if nice is None else f", chunker and indexer at nice {nice}"), result))
            out["ingest_failed_documents"] = sum(1 for c in ingest.final.values() if c < 0)
        finally:
            for reader in readers:
                reader.close()
    return out


def line(name: str, r: dict[str, Any]) -> str:
    rt = r["round_trip_ms"]
    return (f"| {name} | {r['rate']:g} | {r['sent']} | {r['answered']} | {r['duplicates']} | {r['missing']} | "
            f"{rt['p50']} | {rt['p95']} | {rt['p99']} | {rt['max']} | {r['retrieve_ms']['p50']} | "
            f"{r['cites_judged_section']} | {r['cpu_s'].get('answerer', '')} | {r['stack_cores_busy']} |")


HEADER = ("| phase | queries/s | sent | answered | duplicates | missing | round trip p50 ms | p95 | p99 | max | "
          "retrieve_ms p50 | cites the judged section | answerer CPU s | stack cores busy |\n" + "|---" * 14 + "|")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="20,40,60", help="queries/s, comma-separated")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--ingest-docs", type=int, default=1000)
    ap.add_argument("--preload", type=int, default=3000, help="chunks in the index first (bench/corpus.py)")
    ap.add_argument("--drain", type=float, default=30, help="seconds to wait for answers after the last send")
    ap.add_argument("--data-dir", type=Path, help="reuse (or create) this data directory; default: a temporary one")
    ap.add_argument("--ingest-nice", type=int, metavar="N",
                    help="an experiment: every rate while ingesting twice, as configured and with every thread of "
                         "the chunker's and indexer's processes at nice N, in ABBA order")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    own_stack_with_metrics()
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if args.json else print
    with tempfile.TemporaryDirectory(prefix="ragbus-load-") as tmp:
        os.environ["RAGBUS_DATA_DIR"] = str(args.data_dir or tmp)
        settings = Settings()
        logs.configure(settings.log_level, settings.log_format, quiet_clients=True)
        chunks = preload(settings, args.preload, say=say)
        say(HEADER)
        result = measure(settings, [float(r) for r in args.rates.split(",")], args.seconds, args.ingest_docs,
                         args.drain, say, args.ingest_nice)
    result = {"preloaded_chunks": chunks, "seconds": args.seconds, "embedder": settings.embedder.backend,
              "embedder_nice": settings.embedder.nice, **result, **run_facts()}
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
