"""`ragbus demo` / `make demo`: the whole path once, on the embedded defaults.

Starts the stack, ingests ragbus's own documentation (README.md and docs/), asks a question, prints the
cited answer and stops. Exit code 0 only if the answer came back with citations.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from engine.clients import EventProducer
from engine.tail import Tail
from infra.settings import Settings
from schemas.events import QueryRequested
from schemas.topics import TOPICS

from .client import ask_many, documents_from, new_correlation, publish, wait_final
from .render import print_answer
from .supervisor import Stack
from .wiring import build_store

ROOT = Path(__file__).resolve().parent.parent


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_demo(settings_in: Settings, question: str, timeout_s: float) -> int:
    started = time.monotonic()
    with Stack(settings_in) as stack:
        settings = stack.child_settings()
        _say(f"stack up on {stack.bootstrap} in {time.monotonic() - started:.1f}s; ingesting ragbus's docs")
        paths = [p for p in (ROOT / "README.md", ROOT / "docs") if p.exists()]
        events = list(documents_from(paths, settings, build_store(settings), "default", new_correlation()))
        with Tail(settings, TOPICS.status) as tail:
            publish(settings, EventProducer(settings), events)
            final = wait_final(tail, events, timeout_s, lambda s: _say(f"  {s.status.value}: {s.document_id}"))
        failed = [s for s in final.values() if s.status.value != "indexed"]
        if len(final) < len(events) or failed:
            _say(f"indexing incomplete: {len(final)}/{len(events)} finished, {len(failed)} failed")
            return 1
        _say(f"{len(events)} documents indexed after {time.monotonic() - started:.1f}s\n")
        print(f"Q: {question}\n")
        query = QueryRequested(text=question, top_k=4)
        answer = ask_many(settings, [query], timeout_s).get(query.query_id)
        if answer is None:
            _say("no answer arrived")
            return 1

        print("A: ", end="")
        print_answer(answer)
        _say(f"\nanswered in {answer.timings.total_ms:.0f} ms; total demo time {time.monotonic() - started:.1f}s")
        return 0 if answer.citations else 1
