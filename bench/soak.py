"""Soak: does `/health` tell the truth on the embedded stack? And how fresh is the index under load?

    python bench/soak.py [--soak-s 600] [--steady-s 180] [--rate 0.33] [--json]

The stack runs as `ragbus up` runs it (local broker, one process per stage, real model), with every
process's HTTP endpoints on; a poller reads every process's `/health` once a second throughout.

1. Soak (`--soak-s`): bursts of documents (10-25 sections of corpus.jsonl at once) separated by idle
   gaps of 70-150 s, longer than the old fixed 60-second bound, so both false alarms of the old check
   (idle stage receiving work, long embedding batches) get their chance. Expected: no stall, ever.
2. Steady load (`--steady-s`): one document every 1/`--rate` seconds. Freshness (document
   occurred_at -> indexed) is measured twice: by the client (the `indexed` status seen on status.v1)
   and from the indexer's `ragbus_freshness_seconds{kind="document"}` histogram (interpolated, as
   Prometheus' histogram_quantile does).
3. Hung sink: the indexer (run through this file's `--worker` mode) hangs on a document whose id
   starts with `hang-` until a file is removed. Measured: time until the indexer's `/health` says
   stalled, against the bound it reports (`stall_bound_s`), then time to recover once released.

Prints the numbers and exits non-zero on a false stall or a hang reported late (bound + 5 s) or never.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.report import emit, run_facts

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared/data/pydocs-faq-dev/corpus.jsonl"
HANG_ENV = "RAGBUS_SOAK_HANG_FILE"


def worker() -> None:
    """`ragbus worker ...` with an indexer that hangs on `hang-*` documents while the hang file exists."""
    from consumers import indexer
    from ragbus import cli

    real = indexer.Indexer.handle
    hang_file = Path(os.environ[HANG_ENV])

    def handle(self: Any, events: Any) -> Any:
        if any(e.document_id.startswith("hang-") for e in events):
            while hang_file.exists():
                time.sleep(0.2)
        return real(self, events)

    indexer.Indexer.handle = handle  # type: ignore[method-assign]
    sys.argv = ["ragbus", "worker", *sys.argv[2:]]
    cli.main()


class Poller(threading.Thread):
    """Reads every process's /health once a second; keeps every moment a stage was not ok."""

    def __init__(self, ports: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.ports = ports
        self.stop = threading.Event()
        self.polls = 0
        self.failures = 0
        self.bad: list[dict[str, Any]] = []
        self.latest: dict[str, dict[str, Any]] = {}
        self.started = time.monotonic()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            for name, port in self.ports.items():
                code, body = health(port)
                self.polls += 1
                if body is None:
                    self.failures += 1
                    continue
                for st in body["stages"]:
                    self.latest[st["stage"]] = st
                    if st["state"] in ("stalled", "broken"):
                        self.bad.append({"t": round(time.monotonic() - self.started, 1), "process": name,
                                         "code": code, "stage": st["stage"], "state": st["state"],
                                         "stuck_s": st.get("stuck_s"), "bound": st.get("stall_bound_s")})


def health(port: int) -> tuple[int, dict[str, Any] | None]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)
    except (OSError, ValueError):
        return 0, None


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def buckets(text: str, kind: str) -> list[tuple[float, float]]:
    pattern = re.compile(r'^ragbus_freshness_seconds_bucket\{kind="' + kind + r'",le="([^"]+)"\} (\S+)$', re.M)
    return [(float(le), float(count)) for le, count in pattern.findall(text)]


def histogram_quantile(q: float, before: list[tuple[float, float]], after: list[tuple[float, float]]) -> float:
    """Prometheus' interpolation over the buckets observed between two scrapes."""
    counts = [(le, a - b) for (le, a), (_, b) in zip(after, before or [(le, 0.0) for le, _ in after], strict=True)]
    total = counts[-1][1]
    if total <= 0:
        return float("nan")
    rank, prev_le, prev_count = q * total, 0.0, 0.0
    for le, count in counts:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_count) / max(count - prev_count, 1e-9)
        prev_le, prev_count = le, count
    return prev_le


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:  # one scenario, read top to bottom
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--soak-s", type=float, default=600)
    ap.add_argument("--steady-s", type=float, default=180)
    ap.add_argument("--rate", type=float, default=1 / 3, help="documents per second in the steady phase")
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from engine.broker import free_port
    from engine.clients import EventProducer
    from engine.tail import Tail
    from infra.ops import logs
    from infra.settings import Settings
    from ragbus.client import publish
    from ragbus.supervisor import PROCESSES, Stack
    from schemas.events import DocumentArrived
    from schemas.topics import TOPICS

    rng = random.Random(args.seed)
    rows = [json.loads(line) for line in args.corpus.open()]
    rows = [r for r in rows if 300 < len(r["text"]) < 12_000]
    rng.shuffle(rows)
    docs = iter(rows)

    def next_docs(n: int, prefix: str) -> list[DocumentArrived]:
        out = []
        for _ in range(n):
            r = next(docs)
            out.append(DocumentArrived(document_id=f"{prefix}-{r['id']}", title=r.get("title", ""), text=r["text"],
                                       correlation_id=f"soak-{prefix}"))
        return out

    with tempfile.TemporaryDirectory(prefix="ragbus-soak-") as data:
        base = free_port()
        hang_file = Path(data) / "hang"
        os.environ.update({"RAGBUS_DATA_DIR": data, "RAGBUS_METRICS_PORT": str(base), HANG_ENV: str(hang_file),
                           "RAGBUS_LOG_LEVEL": os.environ.get("RAGBUS_LOG_LEVEL", "WARNING")})
        os.environ.pop("RAGBUS_KAFKA_BOOTSTRAP_SERVERS", None)
        settings = Settings()
        logs.configure(settings.log_level, settings.log_format, quiet_clients=True)
        ports = {",".join(p): base + i for i, p in enumerate(PROCESSES)}
        stack = Stack(settings, worker_command=(sys.executable, str(Path(__file__).resolve()), "--worker"))
        with stack:
            child = stack.child_settings()
            producer = EventProducer(child)
            indexed: dict[str, float] = {}
            occurred: dict[str, float] = {}
            tail = Tail(child, TOPICS.status)
            follow_stop = threading.Event()

            def follow() -> None:
                while not follow_stop.is_set():
                    for st in tail.poll(0.2):
                        if st.status.value == "indexed" and st.document_id not in indexed:
                            indexed[st.document_id] = time.time()

            threading.Thread(target=follow, daemon=True).start()

            def send(events: list[DocumentArrived]) -> None:
                publish(child, producer, events)
                for e in events:
                    occurred[e.document_id] = e.occurred_at.timestamp()

            def wait_indexed(ids: list[str], timeout: float) -> None:
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline and not all(i in indexed for i in ids):
                    time.sleep(0.5)

            warm = next_docs(1, "warm")
            send(warm)
            wait_indexed([warm[0].document_id], 180)
            poller = Poller(ports)
            poller.start()

            # 1. bursts and idle gaps
            soak_started, bursts, burst_docs = time.monotonic(), 0, 0
            while time.monotonic() - soak_started < args.soak_s:
                batch = next_docs(rng.randint(10, 25), f"burst{bursts}")
                send(batch)
                bursts, burst_docs = bursts + 1, burst_docs + len(batch)
                wait_indexed([e.document_id for e in batch], 600)
                gap = rng.uniform(70, 150)
                time.sleep(max(0.0, min(gap, args.soak_s - (time.monotonic() - soak_started))))
            soak_s = time.monotonic() - soak_started
            false_stalls = list(poller.bad)

            # 2. steady load
            index_port = ports["indexer,status"]
            before = buckets(scrape(index_port), "document")
            steady: list[str] = []
            steady_started = time.monotonic()
            while time.monotonic() - steady_started < args.steady_s:
                ev = next_docs(1, "steady")
                send(ev)
                steady.append(ev[0].document_id)
                time.sleep(1 / args.rate)
            wait_indexed(steady, 300)
            after = buckets(scrape(index_port), "document")
            client = [indexed[i] - occurred[i] for i in steady if i in indexed]

            # 3. a hung sink
            bound = float(poller.latest["indexer"]["stall_bound_s"])
            hang_file.touch()
            hung = next_docs(1, "hang")
            hung_at = time.monotonic()
            send(hung)
            detected = None
            while time.monotonic() - hung_at < bound + 60:
                if any(b["stage"] == "indexer" and b["t"] >= hung_at - poller.started for b in poller.bad):
                    detected = time.monotonic() - hung_at
                    break
                time.sleep(0.5)
            hang_file.unlink()
            released = time.monotonic()
            wait_indexed([hung[0].document_id], 120)
            while poller.latest.get("indexer", {}).get("state") != "ok" and time.monotonic() - released < 60:
                time.sleep(0.5)
            recovered = time.monotonic() - released
            poller.stop.set()
            follow_stop.set()
            tail.close()

    result = {
        "soak_s": round(soak_s, 1), "bursts": bursts, "burst_docs": burst_docs, "health_polls": poller.polls,
        "poll_failures": poller.failures, "false_stalls": len(false_stalls), "false_stall_samples": false_stalls[:5],
        "steady_s": args.steady_s, "steady_docs": len(steady), "steady_indexed": len(client),
        "freshness_client_p50_s": round(pct(client, 0.5), 2), "freshness_client_p95_s": round(pct(client, 0.95), 2),
        "freshness_metric_p50_s": round(histogram_quantile(0.5, before, after), 2),
        "freshness_metric_p95_s": round(histogram_quantile(0.95, before, after), 2),
        "hang_bound_s": bound, "hang_detected_after_s": round(detected, 1) if detected is not None else None,
        "hang_recovered_after_s": round(recovered, 1),
        **run_facts(),
    }
    emit(result, args.json)
    late = detected is None or detected > bound + 5
    sys.exit(1 if false_stalls or late else 0)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker()
    else:
        main()
