"""Memory of each stage process, idle and under an ingest, for the Kubernetes resource requests and limits.

    python bench/worker_memory.py PATH [--limit N] [--queries N]

PATH as for bench/ingest.py (e.g. ../shared/data/pydocs-faq-dev/pages.jsonl). Starts the stack as
`ragbus up` runs it (one process per stage, indexer and status sharing one) on a fresh data directory and
local broker, samples every process's resident memory (VmRSS) twice a second, records it once the stack
is idle, then ingests the documents and asks questions, and prints idle and peak RSS per process.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from engine.clients import EventProducer
from engine.tail import Tail
from infra.ops import logs
from infra.settings import Settings
from ragbus import wiring
from ragbus.client import ask_many, documents_from, new_correlation, publish, wait_final
from ragbus.supervisor import Stack
from schemas.events import QueryRequested
from schemas.topics import TOPICS


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Sampler(threading.Thread):
    def __init__(self, stack: Stack) -> None:
        super().__init__(daemon=True)
        self._stack = stack
        self.peak: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            for name, pid in self._stack.pids().items():
                self.last[name] = rss_mib(pid)
                self.peak[name] = max(self.peak.get(name, 0.0), self.last[name])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--limit", type=int, default=60)
    parser.add_argument("--queries", type=int, default=20)
    args = parser.parse_args()
    logs.configure("WARNING", "console")
    data = Path(tempfile.mkdtemp(prefix="ragbus-mem-"))
    for key in [k for k in os.environ if k.startswith("RAGBUS_")]:
        del os.environ[key]
    os.environ["RAGBUS_DATA_DIR"] = str(data)
    settings = Settings()
    events = list(documents_from([args.path], settings, wiring.build_store(settings), "default",
                                 new_correlation()))[: args.limit]
    with Stack(settings) as stack:
        sampler = Sampler(stack)
        sampler.start()
        child = stack.child_settings()
        time.sleep(30)  # models loaded, groups joined
        idle = dict(sampler.last)
        started = time.perf_counter()
        with Tail(child, TOPICS.status) as tail:
            publish(child, EventProducer(child), events)
            final = wait_final(tail, events, 1800)
        questions = [QueryRequested(text=e.title or e.document_id, top_k=5) for e in events[: args.queries]]
        answers = ask_many(child, questions, 600)
        elapsed = time.perf_counter() - started
        time.sleep(1.0)
        sampler.stop.set()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{len(final)}/{len(events)} documents indexed, {len(answers)}/{len(questions)} answers, {elapsed:.0f} s")
    print("| process | idle RSS MiB | peak RSS MiB |")
    print("|---|---|---|")
    for name in sorted(sampler.peak):
        print(f"| {name} | {idle.get(name, 0):.0f} | {sampler.peak[name]:.0f} |")


if __name__ == "__main__":
    main()
