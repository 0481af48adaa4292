"""Delivery guarantees on the local broker: rebalance handoff, backpressure, stall detection, and a worker
stopped by SIGTERM or killed by SIGKILL mid-stream."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from consumers.indexer import Indexer
from engine.clients import EventProducer, ensure_topics
from engine.consumer_runner import ConsumerRunner
from infra.ops.health import Health, StallPolicy
from infra.ops.metrics import Metrics
from infra.settings import Settings
from infra.stores.lance import LanceVectorIndex
from infra.stores.sqlite import SqliteDocumentStore
from kernel.errors import RetryableError
from kernel.stage import PerEvent, Stage, per_event
from schemas.events import ChunksEmbedded, DocumentArrived, DocumentStatus, EmbeddedChunk, Status
from schemas.stages import PIPELINE
from schemas.topics import TOPICS, document_key
from tests.conftest import ROOT
from tests.unit.test_stages import Pipeline

from .helpers import runner_for, wait_until

pytestmark = pytest.mark.broker
DOCS = 60


def corpus(tmp: Path, docs: int = DOCS) -> tuple[Pipeline, list[ChunksEmbedded], dict[str, int]]:
    """Embedded events for `docs` documents (2 versions of some), and the chunk count of each latest version."""
    pipe = Pipeline(tmp / "gen", chunk_tokens=24)
    events: list[Any] = []
    expected: dict[str, int] = {}
    for i in range(docs):
        for version in (1, 2) if i % 5 == 0 else (1,):
            text = " ".join(f"Document {i} version {version} sentence {j} about partitions." for j in range(8))
            evs = pipe.embedded(DocumentArrived(document_id=f"doc-{i}", version=version, text=text, title=f"D{i}"))
            events += evs
            expected[f"doc-{i}"] = evs[0].total_chunks  # type: ignore[union-attr]
    return pipe, events, expected


def publish(settings: Settings, events: list[Any]) -> None:
    producer = EventProducer(settings)
    for ev in events:
        producer.send(TOPICS.embedded, document_key(ev.tenant, ev.document_id), ev)
    producer.flush()


def assert_exactly_indexed(store: SqliteDocumentStore, index: LanceVectorIndex, expected: dict[str, int]) -> None:
    for doc_id, n in expected.items():
        in_store, in_index = store.chunk_versions("default", doc_id), index.chunk_versions("default", doc_id)
        assert sorted(in_store) == sorted(in_index), doc_id
        assert len(in_store) == n and len({c for c, _ in in_store}) == n, doc_id  # no duplicates
        assert {v for _, v in in_store} == {2 if int(doc_id.split("-")[1]) % 5 == 0 else 1}
        got = store.get_document("default", doc_id)
        assert got is not None and got.status is Status.INDEXED, doc_id


def slow_indexer(indexer: Indexer) -> Stage:
    def handle(events: Sequence[Any]) -> list[PerEvent]:
        time.sleep(0.4)  # keep the stream in flight long enough to hand it over mid-way
        return indexer.handle(events)
    return Stage(PIPELINE["indexer"], handle, max_batch=3, window_s=0.25)


def test_rebalance_handoff_loses_and_duplicates_nothing(broker: str, settings_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = settings_factory(broker, RAGBUS_KAFKA_POLL_BATCH="3")
    ensure_topics(settings)
    pipe, events, expected = corpus(tmp_path)
    store, index = SqliteDocumentStore(tmp_path / "s.sqlite"), LanceVectorIndex(tmp_path / "l", pipe.embedder.dim)

    def runner() -> tuple[ConsumerRunner, threading.Event, threading.Thread]:
        r = runner_for(settings, slow_indexer(Indexer(index, store, Metrics(), pipe.embedder.dim)))
        stop = threading.Event()
        t = threading.Thread(target=r.run, args=(stop,), daemon=True)
        t.start()
        return r, stop, t

    publish(settings, events)
    a, stop_a, thread_a = runner()
    wait_until(lambda: a.batches >= 3, 30, "the first consumer to make progress")
    b, stop_b, thread_b = runner()
    wait_until(lambda: b.batches >= 1, 30, "the second consumer to get partitions")
    stop_a.set()  # one leaves mid-stream
    thread_a.join(20)
    assert not thread_a.is_alive()
    wait_until(lambda: all((d := store.get_document("default", k)) is not None and d.status is Status.INDEXED
                           and d.version == (2 if int(k.split("-")[1]) % 5 == 0 else 1) for k in expected),
               90, "every document to be indexed after the handoff")
    stop_b.set()
    thread_b.join(20)
    assert_exactly_indexed(store, index, expected)


class FlakyStage:
    """A status stage whose backend fails `failures` times, then works; records what it was handed."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.handed: list[str] = []
        self.done: list[str] = []

    def handle(self, events: Sequence[Any]) -> list[PerEvent]:
        self.handed += [ev.document_id for ev in events]
        if self.failures:
            self.failures -= 1
            raise RetryableError("store unavailable", retry_after=0.3)
        self.done += [ev.document_id for ev in events]
        return [[] for _ in events]

    def stage(self, batch: int = 10) -> Stage:
        return Stage(PIPELINE["status"], self.handle, max_batch=batch, window_s=0.25)


def publish_statuses(settings: Settings, names: list[str]) -> None:
    producer = EventProducer(settings)
    for name in names:
        producer.send(TOPICS.status, document_key("default", name),
                      DocumentStatus(document_id=name, version=1, status=Status.INDEXED, stage="t"))
    producer.flush()


def run(runner: ConsumerRunner) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    return stop, thread


def test_failing_sink_backs_off_paused_with_bounded_memory(broker: str, settings_factory) -> None:  # type: ignore[no-untyped-def]
    settings = settings_factory(broker)
    ensure_topics(settings)
    publish_statuses(settings, [f"d{i}" for i in range(40)])
    flaky, metrics = FlakyStage(failures=4), Metrics()
    health = Health("status", metrics, None, StallPolicy(fixed_s=0.5))
    stop, thread = run(runner_for(settings, flaky.stage(), metrics, health))
    wait_until(lambda: flaky.failures <= 2, 30, "the backend to fail twice")
    assert len(set(flaky.handed)) <= 10, "a failing stage must not be handed more than one batch"
    assert flaky.done == []
    wait_until(health.stalled, 20, "the stage to be reported stalled while its backend fails")
    wait_until(lambda: len(flaky.done) == 40, 60, "every event after the backend recovered")
    stop.set()
    thread.join(20)
    assert sorted(flaky.done) == sorted(f"d{i}" for i in range(40)) and not health.stalled()
    assert metrics.registry.get_sample_value("ragbus_events_total", {"stage": "status", "status": "retried"}) == 4


def worker(settings: Settings, *stages: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items()} | {
        "RAGBUS_KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers or "",
        "RAGBUS_KAFKA_TOPIC_PREFIX": settings.kafka.topic_prefix, "RAGBUS_DATA_DIR": str(settings.data_dir),
        "RAGBUS_KAFKA_SESSION_TIMEOUT_MS": "2000", "RAGBUS_KAFKA_POLL_BATCH": "4"}
    return subprocess.Popen([sys.executable, "-m", "ragbus.cli", "worker", *stages], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_worker_stopped_mid_stream_resumes_without_loss_or_duplicates(broker: str, settings_factory, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                      sig: signal.Signals) -> None:
    settings = settings_factory(broker)
    ensure_topics(settings)
    gen = tmp_path / "gen"
    gen.mkdir()
    pipe, events, expected = corpus(gen, docs=200)  # enough that the worker is stopped mid-stream
    # the worker uses the real embedder's dimension for its index: re-encode the test vectors to it
    from infra.models.embedder import embedding_dim

    dim = embedding_dim(settings.embedder.model)
    def widen(entry: Any) -> Any:
        return entry.model_copy(update={"vector_b64": EmbeddedChunk.encode_vector(
            list(entry.vector()) + [0.0] * (dim - len(entry.vector())))})

    events = [ev.model_copy(update={"dim": dim, "chunks": [widen(c) for c in ev.chunks],
                                    "sections": [widen(s) for s in ev.sections]}) for ev in events]
    publish(settings, events)
    store = SqliteDocumentStore(settings.data_dir / "ragbus.sqlite")
    proc = worker(settings, "indexer")
    wait_until(lambda: store.count_chunks() > 0, 60, "the worker to start indexing")
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    if sig == signal.SIGTERM:
        assert proc.returncode == 0, out[-3000:]
        assert "stage stopped" in out
    indexed_before = store.status_counts().get("indexed", 0)
    assert indexed_before < len(expected), "the stream should still be in flight when the worker stopped"
    proc = worker(settings, "indexer")
    try:
        wait_until(lambda: store.status_counts().get("indexed", 0) == len(expected), 90, "the restarted worker")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert_exactly_indexed(store, LanceVectorIndex(settings.data_dir / "lance", dim), expected)


class PickyStage(FlakyStage):
    """Raises an unexpected error for any batch that holds document "poison" (a bug, say)."""

    def handle(self, events: Sequence[Any]) -> list[PerEvent]:
        if any(ev.document_id == "poison" for ev in events):
            raise ValueError("cannot handle this one")
        return super().handle(events)


NAMES = [f"d{i}" for i in range(10)] + ["poison"] + [f"e{i}" for i in range(10)]


@pytest.mark.parametrize("stage", [
    PickyStage().stage(50),  # the batch raises: the runner runs its events one by one
    # one event raises a type nobody expects, inside a per-event handler: only its result is an error
    Stage(PIPELINE["status"], per_event(lambda ev: ({}[ev.document_id] if ev.document_id == "poison" else [])),
          max_batch=50, window_s=0.25),
], ids=["batch raises ValueError", "event raises KeyError"])
def test_an_unexpected_error_is_pinned_on_its_event_and_the_rest_flows(broker: str, settings_factory,  # type: ignore[no-untyped-def]
                                                                       stage: Stage) -> None:
    from engine.deadletters import list_dead_letters

    settings = settings_factory(broker)
    ensure_topics(settings)
    publish_statuses(settings, NAMES)
    metrics = Metrics()
    runner = runner_for(settings, stage, metrics)
    stop, thread = run(runner)
    wait_until(lambda: metrics.registry.get_sample_value(
        "ragbus_events_total", {"stage": "status", "status": "ok"}) == 20, 60, "every other event")
    dead = list(list_dead_letters(settings, ["status"], 1.0))
    assert thread.is_alive(), "the consumer loop died"
    stop.set()
    thread.join(20)
    assert [(d.key, d.error_type) for d in dead] in ([("default/poison", "ValueError")],
                                                     [("default/poison", "KeyError")])
    assert metrics.registry.get_sample_value("ragbus_stage_crashes_total", {"stage": "status"}) == 1


class BrokenRelease(FlakyStage):
    """Fails every event the way `error` says until `fixed` is set (a bad release, an outage)."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error
        self.fixed = threading.Event()

    def handle(self, events: Sequence[Any]) -> list[PerEvent]:
        self.handed += [ev.document_id for ev in events]
        if not self.fixed.is_set():
            raise self.error
        self.done += [ev.document_id for ev in events]
        return [[] for _ in events]


@pytest.mark.parametrize("error", [RuntimeError("a bug in this release"), RetryableError("backend down")],
                         ids=["unexpected error on every event", "transient error that does not pass"])
def test_a_stage_that_fails_on_everything_stops_instead_of_emptying_its_stream(
        broker: str, settings_factory, error: Exception) -> None:  # type: ignore[no-untyped-def]
    from engine.deadletters import list_dead_letters

    settings = settings_factory(broker, RAGBUS_DELIVERY_RETRY_ATTEMPTS="2", RAGBUS_DELIVERY_BACKOFF_INITIAL_S="0.05",
                                RAGBUS_DELIVERY_PROBE_INTERVAL_S="0.3")
    ensure_topics(settings)
    names = [f"d{i}" for i in range(30)]
    publish_statuses(settings, names)
    broken, metrics = BrokenRelease(error), Metrics()
    health = Health("status", metrics, None)
    stop, thread = run(runner_for(settings, broken.stage(10), metrics, health))
    wait_until(lambda: health.broken_reason is not None, 30, "the stage to report itself broken")
    time.sleep(1.5)  # it keeps probing meanwhile, and must not move on
    assert metrics.registry.get_sample_value("ragbus_stage_broken", {"stage": "status"}) == 1
    assert type(error).__name__ in health.broken_reason or str(error) in health.broken_reason
    assert len(set(broken.handed)) <= 10, "a broken stage must hold its batch, not take the next ones"
    assert list(list_dead_letters(settings, ["status"], 0.5)) == [], "nothing may be dead-lettered"
    broken.fixed.set()
    wait_until(lambda: sorted(set(broken.done)) == sorted(names), 60, "every event once the stage recovered")
    stop.set()
    thread.join(20)
    assert health.broken_reason is None
    assert metrics.registry.get_sample_value("ragbus_stage_broken", {"stage": "status"}) == 0
    assert list(list_dead_letters(settings, ["status"], 0.5)) == []
