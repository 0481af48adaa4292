"""Chaos run: stage processes SIGKILLed at random moments while documents, updates, deletes and queries
flow; then an audit of the stores themselves.

    python bench/chaos.py [--corpus ../shared/data/pydocs-faq-dev/corpus.jsonl] [--docs 300] [--kills 12]
                          [--replicas 2] [--scale-embedder]

The stages run as separate processes on the local broker (as `ragbus up` runs them); a killer SIGKILLs
a random one every few seconds and the supervisor restarts it. With `--replicas N` every stage runs in N
processes of its own (`ragbus worker STAGE`) sharing its topic's partitions, so each kill makes the group
hand the dead member's partitions to a survivor in the middle of its batches (a rebalance), and the
restart another. With `--scale-embedder` the embedder goes from 1 process to 3 and back to 1 during the
ingest (scaled-in processes stop with SIGTERM, as a rollout or an autoscaler stops them).

The workload: every document at version 1; later, updates (version 2) of some, re-sends of identical
events, stale version-1 events arriving after version 2, deletes (version 3) of others, and queries
throughout. At the end it checks:

- every live document is `indexed` at its latest version with exactly its chunks (ids recomputed here
  by chunking the text independently) in both the document store and the vector index;
- no chunk of a deleted or superseded version remains; no chunk id appears twice in either store;
- every document status is final;
- every query got exactly one final answer (redelivery may repeat the answer event, but it is the same
  event: one distinct event id per query).

With `--reindex`, `ragbus reindex start --chunk-size N` (the CLI, as an operator runs it) starts a new index
generation half-way through the workload, while kills go on; once the workload has settled the run waits for
the new generation to catch up (running `ragbus reindex resume` once if it stops short), switches to it with
`ragbus reindex switch`, and audits it like the first: every live document's chunks exactly, with the new chunk
size and the new generation's ids, in both stores; nothing of a deleted document.

With `--faults`, the stages run through bench/faults.py, which injects exceptions of unexpected
types into the chunker, embedder, indexer and answerer handlers for marked documents and questions;
with `--hostile N`, N hostile values (tests/hostile.py: random bytes, deeply nested or huge JSON, wrong
types, unknown enums, control characters) go onto the four input topics among the good events. The
audit then also checks that every faulty or hostile event is in its stage's dead-letter topic and
that no good event is, while the good ones are indexed or answered exactly as above.

It prints the counts and exits non-zero on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.report import ragbus
from chunking.splitter import Chunker
from engine.clients import EventProducer, read_from_start, topic_name
from engine.deadletters import list_dead_letters
from infra.models.embedder import embedding_dim, load_tokenizer
from infra.ops import logs
from infra.settings import Settings
from ragbus import wiring
from ragbus.supervisor import PROCESSES, Stack
from schemas.events import DocumentArrived, DocumentDeleted, QueryRequested, Status, chunk_uuid
from schemas.stages import ANSWERER, EMBEDDER, PIPELINE, STATUS
from schemas.topics import TOPICS, document_key
from tests import hostile

DEFAULT_CORPUS = Path(__file__).resolve().parent.parent.parent / "shared/data/pydocs-faq-dev/corpus.jsonl"


def load(path: Path, n: int) -> list[dict[str, str]]:
    rows = []
    with path.open() as fh:
        for line in fh:
            row = json.loads(line)
            if 200 < len(row["text"]) < 20_000:  # keep the run's length predictable
                rows.append(row)
            if len(rows) == n:
                break
    return rows


class Killer(threading.Thread):
    """SIGKILLs a random stage process at random intervals until it has killed `target` times."""

    def __init__(self, stack: Stack, rng: random.Random, every: tuple[float, float], target: int) -> None:
        super().__init__(daemon=True)
        self.stack, self.rng, self.every, self.target = stack, rng, every, target
        self.kills: list[tuple[float, str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while len(self.kills) < self.target and not self.stop.wait(self.rng.uniform(*self.every)):
            pids = self.stack.pids()
            if not pids:
                continue
            name = self.rng.choice(sorted(pids))
            try:
                os.kill(pids[name], signal.SIGKILL)
                self.kills.append((time.time(), name))
            except ProcessLookupError:
                pass


def answers_by_query(settings: Settings) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = defaultdict(set)
    for m in read_from_start(settings, TOPICS.answers, 2.0, 1000):
        data = json.loads(m.value())
        seen[data["query_id"]].add(data["event_id"])
    return seen


def dead_letter_keys(settings: Settings) -> dict[str, set[str]]:
    """Keys of every dead letter, by stage."""
    out: dict[str, set[str]] = {stage: set() for stage in PIPELINE.names()}
    for dl in list_dead_letters(settings, list(PIPELINE.names()), idle_s=2.0):
        out[dl.stage].add(dl.key or "")
    return out


class Scaler(threading.Thread):
    """The embedder from 1 process to 3 after `up_s`, back to 1 after `down_s` (seconds from the start)."""

    def __init__(self, stack: Stack, up_s: float, down_s: float) -> None:
        super().__init__(daemon=True)
        self.stack, self.up_s, self.down_s = stack, up_s, down_s
        self.events: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        for at, n in ((self.up_s, 3), (self.down_s, 1)):
            if self.stop.wait(max(0.0, started + at - time.monotonic())):
                return
            self.stack.scale((EMBEDDER.name,), n)
            self.events.append((round(time.monotonic() - started, 1), n))


def layout(replicas: int, scale_embedder: bool) -> tuple[tuple[str, ...], ...]:
    """The stack's processes: `ragbus up`'s layout, or every stage alone in `replicas` processes."""
    if replicas <= 1 and not scale_embedder:
        return PROCESSES
    return tuple((stage,) for stage in PIPELINE.names()
                 for _ in range(1 if stage == EMBEDDER.name and scale_embedder else max(1, replicas)))


#: Where each input topic's unreadable values end: the dead-letter topic of the stage that reads it (every
#: stage's input but the stages' own status reports).
HOSTILE_TOPICS = {stage.name: stage.reads for stage in PIPELINE if stage is not STATUS}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--docs", type=int, default=300)
    ap.add_argument("--kills", type=int, default=12, help="at least this many SIGKILLs")
    ap.add_argument("--kill-min-s", type=float, default=3.0, help="shortest pause between two kills")
    ap.add_argument("--kill-max-s", type=float, default=9.0, help="longest pause between two kills")
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--timeout", type=float, default=1200)
    ap.add_argument("--faults", action="store_true", help="inject handler exceptions (bench/faults.py)")
    ap.add_argument("--hostile", type=int, default=0, help="hostile values to publish among the good events")
    ap.add_argument("--replicas", type=int, default=1, help="processes per stage (each stage alone in its own)")
    ap.add_argument("--scale-embedder", action="store_true", help="embedder 1 -> 3 -> 1 processes during the run")
    ap.add_argument("--scale-up-s", type=float, default=20.0, help="when the embedder goes to 3 processes")
    ap.add_argument("--scale-down-s", type=float, default=70.0, help="when it goes back to 1")
    ap.add_argument("--reindex", action="store_true", help="rebuild into a new generation mid-run, then switch")
    ap.add_argument("--reindex-chunk-size", type=int, default=120)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    rows = load(args.corpus, args.docs + (20 if args.faults else 0))
    faulty: dict[str, str] = {}  # document id -> stage whose dead-letter topic it must end in
    if args.faults:
        for n, row in enumerate(rows[args.docs:]):
            kind = ("fault-chunker", "fault-indexer", "flaky", "flaky")[n % 4]
            row["id"] = f"{kind}-{n}-{row['id']}"
            if kind != "flaky":
                faulty[row["id"]] = kind.split("-")[1]
        rng.shuffle(rows)
    fault_rows = [r for r in rows if r["id"] in faulty]
    rows = [r for r in rows if r["id"] not in faulty]
    ids = [r["id"] for r in rows]
    updated = set(rng.sample(ids, len(ids) // 5))
    deleted = set(rng.sample(ids, len(ids) // 10))
    stale = set(rng.sample(sorted(updated), min(15, len(updated))))
    resent = set(rng.sample(ids, len(ids) // 10))

    with tempfile.TemporaryDirectory(prefix="ragbus-chaos-") as data:
        os.environ["RAGBUS_DATA_DIR"] = data
        os.environ.pop("RAGBUS_KAFKA_BOOTSTRAP_SERVERS", None)
        os.environ.setdefault("RAGBUS_LOG_LEVEL", "WARNING")
        # small micro-batches: a stage killed every few seconds must still commit progress in between
        os.environ.setdefault("RAGBUS_EMBEDDER_MAX_BATCH_EVENTS", "8")
        settings = Settings()
        logs.configure(settings.log_level, settings.log_format, quiet_clients=True)
        started = time.time()
        command = (sys.executable, str(Path(__file__).resolve().parent / "faults.py")) if args.faults else None
        with Stack(settings, layout(args.replicas, args.scale_embedder), max_restart_delay_s=2.0,
                   worker_command=command) as stack:
            child = stack.child_settings()
            producer = EventProducer(child)
            killer = Killer(stack, rng, (args.kill_min_s, args.kill_max_s), args.kills)
            killer.start()
            scaler = Scaler(stack, args.scale_up_s, args.scale_down_s)
            if args.scale_embedder:
                scaler.start()

            def doc(row: dict[str, str], version: int) -> DocumentArrived:
                text = row["text"] if version == 1 else row["text"] + "\n\nRevised: " + row["title"]
                return DocumentArrived(document_id=row["id"], version=version, title=row["title"], text=text)

            def send(ev: DocumentArrived | DocumentDeleted | QueryRequested) -> None:
                key = ev.query_id if isinstance(ev, QueryRequested) else document_key(ev.tenant, ev.document_id)
                producer.send(TOPICS.queries if isinstance(ev, QueryRequested) else TOPICS.documents, key, ev)

            queries: list[str] = []
            fault_queries: list[str] = []
            plan: list[DocumentArrived | DocumentDeleted | QueryRequested | tuple[str, bytes]] = [
                doc(r, 1) for r in rows + fault_rows]
            hostile_keys: dict[str, str] = {}
            for n in range(args.hostile):
                stage = rng.choice(sorted(HOSTILE_TOPICS))
                hostile_keys[f"hostile-{n}"] = stage
                plan.insert(rng.randrange(len(plan) + 1), (f"hostile-{n}", hostile.sample(HOSTILE_TOPICS[stage], rng)))
            plan += [doc(r, 1) for r in rows if r["id"] in resent]
            plan += [doc(r, 2) for r in rows if r["id"] in updated]
            plan += [doc(r, 1) for r in rows if r["id"] in stale]  # older version, arriving after the newer
            plan += [DocumentDeleted(document_id=i, version=3) for i in sorted(deleted)]
            reindexed: list[str] = []
            for i, ev in enumerate(plan):
                if args.reindex and i == len(plan) // 2:
                    producer.flush()
                    counts = wiring.build_store(child).status_counts
                    until = time.time() + 300  # a rebuild of real work: half the documents indexed (kills go on)
                    while time.time() < until and counts("default").get("indexed", 0) < len(rows) // 2:
                        time.sleep(0.5)
                    reindexed.append(operator(child, "reindex", "start", "--chunk-size", str(args.reindex_chunk_size)))
                if isinstance(ev, tuple):
                    producer.send_raw(topic_name(child, HOSTILE_TOPICS[hostile_keys[ev[0]]]), ev[0].encode(), ev[1])
                else:
                    send(ev)
                if i % 25 == 0:
                    q = QueryRequested(query_id=f"chaos-q{i}", text=rng.choice(rows)["title"], top_k=3)
                    queries.append(q.query_id)
                    send(q)
                if args.faults and i % 100 == 50:
                    q = QueryRequested(query_id=f"chaos-fault-q{i}", text="fault-answerer: what now?", top_k=3)
                    fault_queries.append(q.query_id)
                    send(q)
                    producer.flush()
                    time.sleep(0.3)  # spread the workload over the run, so kills land mid-stream
            producer.flush()

            store = wiring.build_store(child)
            expected = {r["id"]: (3 if r["id"] in deleted else 2 if r["id"] in updated else 1) for r in rows}

            def settled() -> bool:
                docs = {d.document_id: d for d in store.list_documents("default", 100_000)}
                return all(i in docs and docs[i].version == v and docs[i].status.final for i, v in expected.items())

            deadline = time.time() + args.timeout
            while time.time() < deadline and (not settled() or killer.is_alive()):
                time.sleep(1.0)
            killer.stop.set()
            killer.join()
            scaler.stop.set()
            # quiesce: let restarted stages finish redelivered batches before auditing
            time.sleep(8)
            while time.time() < deadline and not settled():
                time.sleep(1.0)
            if args.reindex:
                def caught_up() -> bool:
                    return store.progress("g2").caught_up

                until = time.time() + 120
                while time.time() < until and not caught_up():
                    time.sleep(1.0)
                if not caught_up():
                    reindexed.append(operator(child, "reindex", "resume"))
                    while time.time() < deadline and not caught_up():
                        time.sleep(1.0)
                reindexed.append(operator(child, "reindex", "switch"))
            answered = answers_by_query(child)
            dead = dead_letter_keys(child)
        elapsed = time.time() - started

        chunker = Chunker(load_tokenizer(settings.embedder.model), settings.chunker.size_tokens,
                          settings.chunker.overlap_tokens)
        store = wiring.build_store(settings)
        index = wiring.build_index(settings, embedding_dim(settings.embedder.model))
        problems: list[str] = []
        docs = {d.document_id: d for d in store.list_documents("default", 100_000)}
        live_chunks = 0
        for row in rows:
            i, v = row["id"], expected[row["id"]]
            d = docs.get(i)
            in_store, in_index = store.chunk_versions("default", i), index.chunk_versions("default", i)
            for where, chunks in (("document store", in_store), ("vector index", in_index)):
                if len({c for c, _ in chunks}) != len(chunks):
                    problems.append(f"{i}: duplicate chunk ids in the {where}")
            if i in deleted:
                if d is None or d.status is not Status.DELETED or in_store or in_index:
                    problems.append(f"{i}: deleted at v3 but status {d and d.status} with "
                                    f"{len(in_store)}/{len(in_index)} chunks left")
                continue
            want = {chunk_uuid("default", i, v, c.index) for c in chunker.chunk(doc(row, v).content_type,
                                                                                  doc(row, v).text or "")}
            live_chunks += len(want)
            if d is None or d.status is not Status.INDEXED or d.version != v:
                problems.append(f"{i}: expected indexed v{v}, found {d and (d.status.value, d.version)}")
            for where, chunks in (("document store", in_store), ("vector index", in_index)):
                if {c for c, _ in chunks} != want:
                    problems.append(f"{i}: {where} holds {len(chunks)} chunks (versions "
                                    f"{sorted({x for _, x in chunks})}), expected exactly the {len(want)} of v{v}")
        if args.reindex:
            problems += audit_generation(settings, store, rows, expected, deleted, doc, args.reindex_chunk_size)
        for i, stage in faulty.items():
            in_store, in_index = store.chunk_versions("default", i), index.chunk_versions("default", i)
            if f"default/{i}" not in dead[stage]:
                problems.append(f"{i}: a faulty {stage} event is not in dlq.{stage}")
            if in_store or in_index:
                problems.append(f"{i}: a faulty {stage} event left {len(in_store)}/{len(in_index)} chunks")
        for key, stage in hostile_keys.items():
            if key not in dead[stage]:
                problems.append(f"{key}: a hostile value for the {stage} is not in its dead-letter topic")
        for q in fault_queries:
            if q not in dead[ANSWERER.name] or answered.get(q):
                problems.append(f"query {q}: a faulty question is not dead-lettered alone")
        expected_dead = {f"default/{i}" for i in faulty} | set(hostile_keys) | set(fault_queries)
        for stage, keys in dead.items():
            problems += [f"{k}: a good event in dlq.{stage}" for k in sorted(keys - expected_dead)]
        not_final = [d.document_id for d in docs.values() if not d.status.final and d.document_id not in faulty]
        problems += [f"{i}: status not final" for i in not_final]
        for q in queries:
            if len(answered.get(q, set())) != 1:
                problems.append(f"query {q}: {len(answered.get(q, set()))} distinct final answers")

    report = {
        "seed": args.seed, "documents": len(rows), "updates": len(updated), "stale_resends": len(stale),
        "identical_resends": len(resent), "deletes": len(deleted), "queries": len(queries),
        "kills": len(killer.kills), "killed": dict(sorted(_count(n for _, n in killer.kills).items())),
        "live_chunks_checked": live_chunks, "elapsed_s": round(elapsed, 1), "problems": len(problems),
        "faulty_events": len(faulty) + len(fault_queries), "hostile_values": len(hostile_keys),
        "replicas": args.replicas, "embedder_scaled": scaler.events,
        "reindex": [r.splitlines()[0][:160] if r else "" for r in reindexed] if args.reindex else None,
    }
    print(json.dumps(report))
    for p in problems[:50]:
        print("MISMATCH", p, file=sys.stderr)
    return 1 if problems or len(killer.kills) < args.kills else 0


def operator(settings: Settings, *args: str) -> str:
    """The CLI as an operator runs it against this stack: what it printed (raises on failure)."""
    done = ragbus(settings, *args, timeout=600)
    return (done.stderr or done.stdout).strip()


def audit_generation(settings: Settings, store: Any, rows: list[dict[str, str]], expected: dict[str, int],
                     deleted: set[str], doc: Any, chunk_size: int) -> list[str]:
    """The second generation, audited like the first: exactly each live document's chunks at its latest version,
    cut at `chunk_size`, with g2's ids, in both stores; nothing of a deleted one; it serves."""
    from kernel.generations import State

    problems = []
    g2 = next((g for g in store.generations() if g.name == "g2"), None)
    if g2 is None or g2.state is not State.SERVING:
        return [f"g2 is not serving after the switch: {g2}"]
    chunker = Chunker(load_tokenizer(g2.build.model), g2.build.chunk_size, g2.build.chunk_overlap)
    if g2.build.chunk_size != chunk_size:
        problems.append(f"g2 was built with chunk size {g2.build.chunk_size}, not {chunk_size}")
    gs = wiring.for_generation(settings, g2.build)
    index = wiring.build_index(gs, embedding_dim(g2.build.model), "g2", g2.build)
    for row in rows:
        i, v = row["id"], expected[row["id"]]
        in_store, in_index = store.chunk_versions("default", i, "g2"), index.chunk_versions("default", i)
        if i in deleted:
            if in_store or in_index:
                problems.append(f"g2 {i}: deleted but {len(in_store)}/{len(in_index)} chunks left")
            continue
        event = doc(row, v)
        want = {chunk_uuid("default", i, v, c.index, "g2") for c in chunker.chunk(event.content_type, event.text)}
        for where, chunks in (("document store", in_store), ("vector index", in_index)):
            if {c for c, _ in chunks} != want:
                problems.append(f"g2 {i}: {where} holds {len(chunks)} chunks (versions "
                                f"{sorted({x for _, x in chunks})}), expected exactly the {len(want)} of v{v}")
    return problems


def _count(items: object) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for x in items:  # type: ignore[attr-defined]
        out[x] += 1
    return out


if __name__ == "__main__":
    sys.exit(main())
