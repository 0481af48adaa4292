"""Delivery guarantees on the local broker: rebalance handoff, backpressure, stall detection, and a worker
stopped by SIGTERM or killed by SIGKILL mid-stream."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from consumers.indexer import IndexerSink
from infra.kafka.clients import EventProducer, SourceRecord, ensure_topics
from infra.kafka.consumer_runner import ConsumerRunner
from infra.ops.health import Health, serve
from infra.ops.metrics import Metrics
from infra.settings import Settings
from infra.stores.lance import LanceVectorIndex
from infra.stores.sqlite import SqliteDocumentStore
from kernel.errors import RetryableError
from schemas.events import ChunksEmbedded, DocumentArrived, DocumentStatus, Status
from schemas.topics import TOPICS, document_key
from tests.conftest import ROOT
from tests.unit.test_stages import Pipeline

from .helpers import wait_until

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


class SlowSink(IndexerSink):
    def flush(self) -> list[tuple[SourceRecord, Any, Exception]]:
        time.sleep(0.4)  # keep the stream in flight long enough to hand it over mid-way
        return super().flush()


def test_rebalance_handoff_loses_and_duplicates_nothing(broker: str, settings_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = settings_factory(broker, RAGBUS_KAFKA_POLL_BATCH="3")
    ensure_topics(settings)
    pipe, events, expected = corpus(tmp_path)
    store, index = SqliteDocumentStore(tmp_path / "s.sqlite"), LanceVectorIndex(tmp_path / "l", pipe.embedder.dim)

    def runner() -> tuple[ConsumerRunner, threading.Event, threading.Thread]:
        sink = SlowSink(index, store, EventProducer(settings), Metrics(), pipe.embedder.dim)
        r = ConsumerRunner(settings, "indexer", TOPICS.embedded, sink, Metrics(), EventProducer(settings))
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


class FlakySink:
    """Fails `failures` flushes, then succeeds; records what was added while failing."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.added: list[Any] = []
        self.flushed: list[Any] = []
        self.buffer: list[Any] = []

    def add(self, event: Any, record: SourceRecord) -> None:
        self.added.append(event)
        self.buffer.append(event)

    def flush(self) -> list[Any]:
        if self.failures:
            self.failures -= 1
            raise RetryableError("store unavailable", retry_after=0.3)
        self.flushed += self.buffer
        self.buffer = []
        return []

    def discard(self) -> None:
        self.buffer = []


def test_failing_sink_backs_off_paused_with_bounded_memory(broker: str, settings_factory) -> None:  # type: ignore[no-untyped-def]
    settings = settings_factory(broker, RAGBUS_KAFKA_POLL_BATCH="10")
    ensure_topics(settings)
    producer = EventProducer(settings)
    for i in range(40):
        producer.send(TOPICS.status, document_key("default", f"d{i}"),
                      DocumentStatus(document_id=f"d{i}", version=1, status=Status.INDEXED, stage="t"))
    producer.flush()
    sink = FlakySink(failures=4)
    metrics = Metrics()
    health = Health("status", metrics, None, stall_after_s=0.5)
    runner = ConsumerRunner(settings, "status", TOPICS.status, sink, metrics, EventProducer(settings), health)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    wait_until(lambda: sink.failures <= 2, 30, "the sink to fail twice")
    assert len(sink.added) <= 10, "a failing sink must not be handed more than one batch"
    assert sink.flushed == []
    wait_until(health.stalled, 20, "the stage to be reported stalled while its sink fails")
    wait_until(lambda: len(sink.flushed) == 40, 60, "every event after the sink recovered")
    stop.set()
    thread.join(20)
    assert len(sink.added) == 40 and not health.stalled()
    assert metrics.registry.get_sample_value("ragbus_events_total", {"stage": "status", "status": "retried"}) == 4


def test_health_endpoint_reports_a_stall(tmp_path: Path) -> None:
    metrics = Metrics()
    health = Health("embedder", metrics, tmp_path, stall_after_s=0.2)
    from infra.kafka.broker import free_port

    port = free_port()
    server = serve(port, metrics, [health])
    assert server is not None
    try:
        health.set_lag({"t[0]": 0})
        assert json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/health"))["status"] == "ok"
        health.set_lag({"t[0]": 5})
        time.sleep(0.3)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health")
        assert err.value.code == 503 and json.load(err.value)["stages"][0]["stalled"]
        assert b"ragbus_consumer_lag" in urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read()
        assert json.loads(next(tmp_path.glob("embedder-*.json")).read_text())["lag"] == 5
    finally:
        server.shutdown()


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
    events = [ev.model_copy(update={"dim": dim, "chunks": [c.model_copy(update={"vector_b64": c.encode_vector(
        list(c.vector()) + [0.0] * (dim - len(c.vector())))}) for c in ev.chunks]}) for ev in events]
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


class PickySink(FlakySink):
    """Fails every flush whose buffer holds document "poison" with an unexpected error (a bug, say)."""

    def __init__(self) -> None:
        super().__init__(failures=0)

    def flush(self) -> list[Any]:
        if any(ev.document_id == "poison" for ev in self.buffer):
            raise ValueError("cannot handle this one")
        return super().flush()


def test_an_unexpected_error_is_pinned_on_its_event_and_the_rest_flows(broker: str, settings_factory) -> None:  # type: ignore[no-untyped-def]
    from infra.kafka.deadletters import list_dead_letters

    settings = settings_factory(broker, RAGBUS_KAFKA_POLL_BATCH="50")
    ensure_topics(settings)
    producer = EventProducer(settings)
    names = [f"d{i}" for i in range(10)] + ["poison"] + [f"e{i}" for i in range(10)]
    for name in names:
        producer.send(TOPICS.status, document_key("default", name),
                      DocumentStatus(document_id=name, version=1, status=Status.INDEXED, stage="t"))
    producer.flush()
    sink = PickySink()
    runner = ConsumerRunner(settings, "status", TOPICS.status, sink, Metrics(), EventProducer(settings))
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    wait_until(lambda: len(sink.flushed) == 20, 60, "every other event")
    dead = list(list_dead_letters(settings, ["status"], 1.0))
    stop.set()
    thread.join(20)
    assert sorted(ev.document_id for ev in sink.flushed) == sorted(n for n in names if n != "poison")
    assert [(d.key, d.error_type, d.reason) for d in dead] == [
        ("default/poison", "ValueError", "cannot handle this one")]


class GrumpySink(FlakySink):
    """`add` raises an exception type no runner expects for document "poison" (a bug in a new release)."""

    def __init__(self) -> None:
        super().__init__(failures=0)

    def add(self, event: Any, record: SourceRecord) -> None:
        if event.document_id == "poison":
            raise KeyError("no such field in this release")
        super().add(event, record)


def test_an_unexpected_error_in_add_is_pinned_on_its_event_and_the_batch_commits(broker: str, settings_factory) -> None:  # type: ignore[no-untyped-def]
    from infra.kafka.deadletters import list_dead_letters

    settings = settings_factory(broker, RAGBUS_KAFKA_POLL_BATCH="50")
    ensure_topics(settings)
    producer = EventProducer(settings)
    names = [f"d{i}" for i in range(10)] + ["poison"] + [f"e{i}" for i in range(10)]
    for name in names:
        producer.send(TOPICS.status, document_key("default", name),
                      DocumentStatus(document_id=name, version=1, status=Status.INDEXED, stage="t"))
    producer.flush()
    sink, metrics = GrumpySink(), Metrics()
    runner = ConsumerRunner(settings, "status", TOPICS.status, sink, metrics, EventProducer(settings))
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    wait_until(lambda: len(sink.flushed) == 20, 60, "every other event")
    dead = list(list_dead_letters(settings, ["status"], 1.0))
    assert thread.is_alive(), "the consumer loop died"
    stop.set()
    thread.join(20)
    assert [(d.key, d.error_type) for d in dead] == [("default/poison", "KeyError")]
    assert metrics.registry.get_sample_value("ragbus_stage_crashes_total", {"stage": "status"}) == 1
