"""Consumer stages against the real local broker: commit after flush, dead letters, restart."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from consumers import status
from engine.clients import EventProducer, ensure_topics, topic_name
from engine.consumer_runner import ConsumerRunner
from infra.stores.sqlite import SqliteDocumentStore
from kernel.stage import PerEvent, Stage
from schemas.events import DocumentStatus, Status
from schemas.stages import PIPELINE
from schemas.topics import TOPICS, document_key

from .helpers import headers, read_all, runner_for, wait_until

pytestmark = pytest.mark.broker


def _run(runner: ConsumerRunner) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    t = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    t.start()
    return t, stop


def test_status_sink_commits_after_write_and_dead_letters_bad_input(broker: str, settings_factory,  # type: ignore[no-untyped-def]
                                                                    tmp_path: Path) -> None:
    settings = settings_factory(broker)
    ensure_topics(settings)
    store = SqliteDocumentStore(tmp_path / "s.sqlite")
    producer = EventProducer(settings)
    good = DocumentStatus(document_id="a", version=1, status=Status.INDEXED, stage="test", chunks=2)
    producer.send(TOPICS.status, document_key("default", "a"), good)
    raw = topic_name(settings, TOPICS.status)
    producer.send_raw(raw, b"k", b"{broken json", [("trace", b"x")])
    producer.send_raw(raw, b"k", b'{"type": "document.status", "schema_version": 2}', [])
    producer.flush()

    runner = runner_for(settings, status.stage(store, 256, 0.25))
    thread, stop = _run(runner)
    wait_until(lambda: store.get_document("default", "a") is not None, 30, "the status to be stored")
    dead = read_all(settings, PIPELINE["status"].dead_letters, expect=2)
    stop.set()
    thread.join(15)
    assert not thread.is_alive(), "the runner did not stop on request"

    assert sorted(m.value() for m in dead) == sorted([b"{broken json",
                                                      b'{"type": "document.status", "schema_version": 2}'])
    h = {m.value(): headers(m) for m in dead}
    assert "invalid JSON" in h[b"{broken json"]["ragbus-dlq-reason"]
    assert h[b"{broken json"]["ragbus-dlq-topic"] == raw
    assert h[b"{broken json"]["trace"] == "x"  # original headers kept
    assert "unsupported schema_version 2" in h[b'{"type": "document.status", "schema_version": 2}']["ragbus-dlq-reason"]

    # committed: a new runner of the same group sees nothing old, and handles what is new
    newer = DocumentStatus(document_id="b", version=1, status=Status.FAILED, stage="test", error="boom")
    producer.send(TOPICS.status, document_key("default", "b"), newer)
    producer.flush()
    seen: list[str] = []

    def recording(events: Sequence[DocumentStatus]) -> list[PerEvent]:
        seen.extend(ev.document_id for ev in events)
        return status.apply_statuses(store, events)

    runner2 = runner_for(settings, Stage(PIPELINE["status"], recording, max_batch=256, window_s=0.25))
    thread, stop = _run(runner2)
    wait_until(lambda: store.get_document("default", "b") is not None, 30, "the second status")
    stop.set()
    thread.join(15)
    assert seen == ["b"]
