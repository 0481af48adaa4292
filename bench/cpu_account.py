"""Where the CPU goes: CPU seconds per process and per stage step, idle, for an ingest and for a query burst.

    python bench/cpu_account.py [--idle 30] [--docs 40] [--queries 200] [--preload 0] [--data-dir DIR] [--json]

CPU seconds (user + system, from the kernel's accounting of each process and thread) are what a run costs
whatever else shares the machine; wall seconds on a shared 2-core machine are not. The run:

1. starts the stack (`ragbus up`'s processes and local broker) on a fresh data directory (or `--data-dir`,
   optionally filled with `--preload` chunks by bench/corpus.py), each process with its /metrics port, and
   warms it up (one document indexed, one query answered: model loading and group joins are not counted);
2. idle: `--idle` seconds with nothing to do;
3. ingest: `--docs` corpus sections under new titles (really embedded), published at once, until indexed;
4. query burst: `--queries` retrieve-only questions published at once, until all are answered.

Per phase and process (each stage process, the broker, this client) it reports CPU seconds, split into the
Kafka client's threads (librdkafka names them `rdk:*`; the faust stages' aiokafka runs on the event loop and
is not split out) and the rest; and per stage step the seconds of the thread that does it, from each process's
`ragbus_cpu_seconds_total{stage,step}` (decode, handle, encode, deliver, upkeep). A model's own thread pool
is not in `handle`: the embedder process's total minus its steps is mostly that pool.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.corpus import fresh_documents, preload, questions
from bench.report import emit, run_facts
from engine.clients import EventProducer
from engine.tail import Tail
from infra.ops import logs
from infra.settings import Settings
from ragbus.client import QueryClient, publish, wait_final
from ragbus.supervisor import PROCESSES, Stack
from schemas.events import DocumentArrived, QueryRequested
from schemas.topics import TOPICS


def own_stack_with_metrics() -> None:
    """The environment for a stack of the benchmark's own (`ragbus up`'s processes on the local broker, quiet logs)
    whose processes serve their metrics on free loopback ports, where the per-step CPU counters are read."""
    os.environ.pop("RAGBUS_KAFKA_BOOTSTRAP_SERVERS", None)
    os.environ.setdefault("RAGBUS_LOG_LEVEL", "WARNING")
    os.environ["RAGBUS_METRICS_HOST"] = "127.0.0.1"
    os.environ["RAGBUS_METRICS_PORT"] = str(free_range(len(PROCESSES)))


def free_range(n: int) -> int:
    """A base port with n free ports above it (the stack gives process i the port base + i)."""
    for _ in range(50):
        base = random.randint(20_000, 60_000)
        try:
            for port in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise SystemExit("no free range of metrics ports")


class Account:
    """Snapshots of the stack's processes (kernel CPU accounting per thread) and of their step counters."""

    def __init__(self, stack: Stack, settings: Settings, base_port: int) -> None:
        self._procs: dict[str, psutil.Process] = {label: psutil.Process(pid) for label, pid in stack.pids().items()}
        self._ports = {label: base_port + i for i, label in enumerate(stack.pids())}
        broker = json.loads(settings.broker_file().read_text())["pid"]
        self._procs["broker"] = psutil.Process(broker)
        self._procs["client (this bench)"] = psutil.Process()

    def snapshot(self) -> dict[str, Any]:
        threads: dict[str, dict[str, float]] = {}
        for label, proc in self._procs.items():
            split = {"total": 0.0, "kafka_client_threads": 0.0}
            for t in proc.threads():
                cpu = t.user_time + t.system_time
                split["total"] += cpu
                if _comm(proc.pid, t.id).startswith("rdk:"):
                    split["kafka_client_threads"] += cpu
            threads[label] = split
        return {"at": time.perf_counter(), "threads": threads, "steps": self._steps()}

    def _steps(self) -> dict[str, float]:
        steps: dict[str, float] = {}
        for port in self._ports.values():
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("ragbus_cpu_seconds_total{"):
                    labels, value = line[len("ragbus_cpu_seconds_total{"):].rsplit("} ", 1)
                    fields = dict(part.split("=", 1) for part in labels.split(","))
                    steps[f"{fields['stage'].strip(chr(34))}.{fields['step'].strip(chr(34))}"] = float(value)
        return steps

    @staticmethod
    def between(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        procs = {}
        for label, after in b["threads"].items():
            before = a["threads"].get(label, {})
            total = after["total"] - before.get("total", 0.0)
            kafka = after["kafka_client_threads"] - before.get("kafka_client_threads", 0.0)
            procs[label] = {"cpu_s": round(total, 2), "kafka_client_threads_s": round(kafka, 2)}
        steps = {k: round(v - a["steps"].get(k, 0.0), 3) for k, v in sorted(b["steps"].items())}
        wall = b["at"] - a["at"]
        stack_cpu = sum(p["cpu_s"] for label, p in procs.items() if not label.startswith("client"))
        return {"wall_s": round(wall, 2), "stack_cpu_s": round(stack_cpu, 2),
                "stack_cores_busy": round(stack_cpu / wall, 3), "processes": procs,
                "steps_cpu_s": {k: v for k, v in steps.items() if v > 0}}


def _comm(pid: int, tid: int) -> str:
    try:
        return Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
    except OSError:
        return ""


def ingest(child: Settings, docs: list[DocumentArrived]) -> int:
    with Tail(child, TOPICS.status) as tail:
        publish(child, EventProducer(child), docs)
        final = wait_final(tail, docs, 1800)
    if len(final) < len(docs):
        raise SystemExit(f"only {len(final)} of {len(docs)} documents finished")
    return sum(s.chunks for s in final.values())


def measure(settings: Settings, idle_s: float, n_docs: int, n_queries: int) -> dict[str, Any]:
    texts = questions()
    docs = fresh_documents()
    with Stack(settings) as stack:
        child = stack.child_settings()
        ingest(child, [next(docs)])
        with QueryClient(child) as client:
            if not client.ask([QueryRequested(text=texts[0], retrieve_only=True)], 120):
                raise SystemExit("the stack did not answer the warm-up query within 120 s")
            account = Account(stack, child, settings.metrics_port)
            out: dict[str, Any] = {}
            if idle_s:
                start = account.snapshot()
                time.sleep(idle_s)
                out["idle"] = Account.between(start, account.snapshot())
            if n_docs:
                start = account.snapshot()
                chunks = ingest(child, list(itertools.islice(docs, n_docs)))
                out["ingest"] = Account.between(start, account.snapshot()) | {
                    "documents": n_docs, "chunks": chunks}
                out["ingest"]["stack_cpu_ms_per_chunk"] = round(out["ingest"]["stack_cpu_s"] * 1000 / max(chunks, 1), 1)
            if n_queries:
                batch = [QueryRequested(text=texts[i % len(texts)], retrieve_only=True, top_k=5)
                         for i in range(n_queries)]
                start = account.snapshot()
                answered = client.ask(batch, 600)
                out["query_burst"] = Account.between(start, account.snapshot()) | {
                    "queries": n_queries, "answered": len(answered)}
                out["query_burst"]["stack_cpu_ms_per_query"] = round(
                    out["query_burst"]["stack_cpu_s"] * 1000 / n_queries, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--idle", type=float, default=30, help="seconds of the idle phase (0: none)")
    ap.add_argument("--docs", type=int, default=40, help="corpus sections ingested (0: no ingest phase)")
    ap.add_argument("--queries", type=int, default=200, help="queries in the burst (0: none)")
    ap.add_argument("--preload", type=int, default=0, help="chunks in the index first (bench/corpus.py)")
    ap.add_argument("--data-dir", type=Path, help="reuse (or create) this data directory; default: a temporary one")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    own_stack_with_metrics()
    with tempfile.TemporaryDirectory(prefix="ragbus-cpu-") as tmp:
        os.environ["RAGBUS_DATA_DIR"] = str(args.data_dir or tmp)
        settings = Settings()
        logs.configure(settings.log_level, settings.log_format, quiet_clients=True)
        preloaded = preload(settings, args.preload, say=lambda _: None) if args.preload else 0
        result = {"preloaded_chunks": preloaded, "embedder": settings.embedder.backend,
                  **measure(settings, args.idle, args.docs, args.queries), **run_facts()}
    emit(result, args.json)


if __name__ == "__main__":
    main()
