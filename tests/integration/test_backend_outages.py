"""Stores that go away and come back, each a real process stopped and restarted under a running stage:

- MongoDB: `nx-27017` (a MongoDB wire-protocol server on SQLite, state in a file) killed in the middle of an
  ingest and of a query burst, then started again: pymongo's own network exceptions reach the adapter's
  classification, the stage pauses (retries, then the breaker holds and probes), health says why, and
  afterwards every document is indexed exactly once and every query answered exactly once.
- Weaviate: the wire double (tests/weaviate_double.py) in a process of its own, its state in a file,
  killed mid-ingest and restarted.
- A full disk under LanceDB and SQLite: the indexer worker (`ragbus worker indexer`) in a child process whose
  file-size limit (RLIMIT_FSIZE) drops to nothing and comes back: it pauses with the reason, commits nothing
  past what was written, and resumes.

The outages here are a few seconds; `pytest -m slow` runs the MongoDB one for 30 s.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consumers.answerer import Answerer
from consumers.indexer import Indexer
from engine.broker import free_port, wait_for_port
from engine.clients import EventProducer, ensure_topics
from engine.deadletters import list_dead_letters
from engine.groups import group_lags
from infra.ops.health import Health
from infra.ops.metrics import Metrics
from infra.settings import Settings
from infra.stores.lance import LanceVectorIndex
from infra.stores.sqlite import SqliteDocumentStore
from kernel.ports import DocumentStore, VectorIndex
from retrieval.extractive import ExtractiveAnswerer
from retrieval.retriever import RetrievalConfig, Retriever
from schemas.events import AnswerGenerated, DocumentArrived, QueryRequested, Status
from schemas.topics import TOPICS, document_key
from streams.embedder import CachedEmbedder
from tests.conftest import ROOT
from tests.doubles import DictCache, HashEmbedder
from tests.unit.test_stages import Pipeline

from .helpers import read_all, runner_for, wait_until

pytestmark = pytest.mark.broker
FAST = {"RAGBUS_DELIVERY_RETRY_ATTEMPTS": "3", "RAGBUS_DELIVERY_BACKOFF_INITIAL_S": "0.1",
        "RAGBUS_DELIVERY_BACKOFF_MAX_S": "1", "RAGBUS_DELIVERY_PROBE_INTERVAL_S": "1",
        "RAGBUS_DELIVERY_PROBE_MAX_S": "2"}


class Server:
    """A server process on fixed ports that a test kills (SIGKILL: no goodbye to its clients) and starts again."""

    def __init__(self, command: list[str], port: int, log: Path) -> None:
        self.command, self.port, self.log = command, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                         stdin=subprocess.DEVNULL)
        wait_for_port(self.port, 30)
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def corpus(tmp: Path, docs: int, prefix: str, dim: int) -> tuple[list[Any], dict[str, int]]:
    """ChunksEmbedded events of `docs` documents (vectors of `dim`) and each one's chunk count."""
    pipe = Pipeline(tmp / f"gen-{prefix}")
    pipe.embedder = HashEmbedder(dim)
    pipe.cached = CachedEmbedder(pipe.embedder, DictCache())
    events: list[Any] = []
    expected: dict[str, int] = {}
    for i in range(docs):
        text = " ".join(f"Document {prefix}{i} sentence {j} about partitions and offsets." for j in range(12))
        evs = pipe.embedded(DocumentArrived(document_id=f"{prefix}{i}", version=1, text=text, title=f"D{i}"))
        events += evs
        expected[f"{prefix}{i}"] = evs[0].total_chunks
    return events, expected


def publish(settings: Settings, events: list[Any], gap_s: float = 0.0) -> None:
    producer = EventProducer(settings)
    for ev in events:
        key = ev.query_id if isinstance(ev, QueryRequested) else document_key(ev.tenant, ev.document_id)
        producer.send(TOPICS.queries if isinstance(ev, QueryRequested) else TOPICS.embedded, key, ev)
        if gap_s:
            producer.flush()
            time.sleep(gap_s)
    producer.flush()


def indexed(store: DocumentStore, expected: dict[str, int]) -> int:
    return sum(1 for d in expected if (r := store.get_document("default", d)) is not None
               and r.status is Status.INDEXED)


def assert_exactly_indexed(store: DocumentStore, index: VectorIndex, expected: dict[str, int]) -> None:
    for doc_id, n in expected.items():
        in_store, in_index = store.chunk_versions("default", doc_id), index.chunk_versions("default", doc_id)
        assert len(in_store) == n and len({c for c, _ in in_store}) == n, doc_id  # each chunk once
        assert sorted(in_store) == sorted(c for c in in_index if c[0] in {x for x, _ in in_store}), doc_id
        got = store.get_document("default", doc_id)
        assert got is not None and got.status is Status.INDEXED and got.chunks == n, doc_id


def start(runner: Any) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    return stop, thread


# -- MongoDB ----------------------------------------------------------------------------------------------------

@pytest.fixture
def mongo(tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    server = Server([str(Path(sys.executable).parent / "nx-27017"), "--db", str(tmp_path / "mongo.db"), "-p", str(port),
                     "--log-file", str(tmp_path / "nx.log"), "--pid-file", str(tmp_path / "nx.pid")],
                    port, tmp_path / "nx.out").start()
    yield server
    server.close()


@pytest.mark.parametrize("outage_s", [6, pytest.param(30, marks=pytest.mark.slow)], ids=["6s", "30s"])
def test_mongodb_killed_mid_ingest_and_mid_query_burst_then_restarted(
        broker: str, settings_factory, tmp_path: Path, mongo: Server, outage_s: float) -> None:  # type: ignore[no-untyped-def]
    from infra.stores.mongo import MongoDocumentStore, connect

    settings = settings_factory(broker, RAGBUS_MONGODB_URI=f"mongodb://127.0.0.1:{mongo.port}/?directConnection=true",
                                RAGBUS_MONGODB_TIMEOUT_MS="1000", **FAST)
    ensure_topics(settings)
    events, expected = corpus(tmp_path, 30, "m", 64)
    store = MongoDocumentStore(connect(settings.mongodb), settings.mongodb.database)
    index = LanceVectorIndex(tmp_path / "lance", 64)
    metrics = Metrics(stages=["indexer", "answerer"])
    health = {s: Health(s, metrics) for s in ("indexer", "answerer")}
    retriever = Retriever(HashEmbedder(64), index, RetrievalConfig(candidates=50))
    answerer = Answerer(retriever, ExtractiveAnswerer(), store, metrics, lambda out: None, cache=None)
    runners = [start(runner_for(settings, Indexer(index, store, metrics, 64).stage(4, 0.0), metrics,
                                health["indexer"])),
               start(runner_for(settings, answerer.stage(8, 0.0), metrics, health["answerer"]))]
    try:
        publish(settings, events[: len(events) // 3])
        wait_until(lambda: indexed(store, expected) >= 3, 60, "the ingest under way")
        mongo.kill()  # mid-ingest: the rest of the documents and a burst of queries arrive while it is down
        publish(settings, events[len(events) // 3:])
        queries = [QueryRequested(text=f"offsets of document m{i}?", deadline_ms=600_000) for i in range(12)]
        publish(settings, queries)
        wait_until(lambda: all(h.broken_reason for h in health.values()), 60, "both stages to pause on MongoDB")
        for h in health.values():
            assert "mongodb" in str(h.broken_reason)  # health says why, from pymongo's own exception class
            assert any(k in str(h.broken_reason) for k in ("ServerSelectionTimeoutError", "AutoReconnect",
                                                             "NetworkTimeout", "ConnectionFailure"))
        time.sleep(outage_s)
        mongo.start()
        wait_until(lambda: indexed(store, expected) == len(expected), 120, "every document indexed")
        wait_until(lambda: {a.query_id for a in _answers(settings)} >= {q.query_id for q in queries}, 60,
                   "every query answered")
        assert_exactly_indexed(store, index, expected)
        by_query: dict[str, set[str]] = {}
        for a in _answers(settings):
            by_query.setdefault(a.query_id, set()).add(str(a.event_id))
        assert all(len(by_query[q.query_id]) == 1 for q in queries)  # one final answer each
        wait_until(lambda: not any(h.broken_reason for h in health.values()), 30, "both stages recovered")
        assert list(list_dead_letters(settings, ["indexer", "answerer"], 0.5)) == []
    finally:
        for stop, thread in runners:
            stop.set()
            thread.join(30)


def _answers(settings: Settings) -> list[AnswerGenerated]:
    return [AnswerGenerated.model_validate_json(m.value()) for m in read_all(settings, TOPICS.answers, 10**6, 0.1)]


# -- Weaviate ---------------------------------------------------------------------------------------------------

@pytest.fixture
def weaviate(tmp_path: Path) -> Iterator[tuple[Server, int]]:
    http, grpc_port = free_port(), free_port()
    server = Server([sys.executable, "-m", "tests.weaviate_double", "--http-port", str(http), "--grpc-port",
                     str(grpc_port), "--state", str(tmp_path / "weaviate.pickle")], http, tmp_path / "w.out").start()
    wait_for_port(grpc_port, 30)
    yield server, grpc_port
    server.close()


def test_weaviate_killed_mid_ingest_then_restarted(broker: str, settings_factory, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                   weaviate: tuple[Server, int]) -> None:
    from infra.stores.weaviate import WeaviateVectorIndex, connect

    server, grpc_port = weaviate
    settings = settings_factory(broker, RAGBUS_WEAVIATE_URL=f"http://127.0.0.1:{server.port}",
                                RAGBUS_WEAVIATE_GRPC_PORT=str(grpc_port), RAGBUS_WEAVIATE_TIMEOUT_S="2", **FAST)
    ensure_topics(settings)
    events, expected = corpus(tmp_path, 30, "w", 64)
    store = SqliteDocumentStore(tmp_path / "db.sqlite")
    index = WeaviateVectorIndex(connect(settings.weaviate), settings.weaviate.collection, 64)
    metrics, health = Metrics(stages=["indexer"]), Health("indexer", Metrics(stages=["indexer"]))
    stop, thread = start(runner_for(settings, Indexer(index, store, metrics, 64).stage(4, 0.0), metrics, health))
    try:
        publish(settings, events[: len(events) // 3])
        wait_until(lambda: indexed(store, expected) >= 3, 60, "the ingest under way")
        server.kill()
        publish(settings, events[len(events) // 3:])
        # the client retries an unavailable server itself (about a minute) before the adapter's RetryableError
        # pauses the stage; meanwhile the batch is held in hand, uncommitted
        wait_until(lambda: health.snapshot()["in_batch_s"] is not None or health.broken_reason is not None, 30,
                   "the indexer to wait on Weaviate")
        time.sleep(5)
        assert indexed(store, expected) < len(expected)
        assert health.broken_reason is None or "weaviate" in health.broken_reason
        server.start()
        wait_until(lambda: indexed(store, expected) == len(expected), 120, "every document indexed")
        assert_exactly_indexed(store, index, expected)
        wait_until(lambda: health.broken_reason is None, 30, "the indexer recovered")
        assert list(list_dead_letters(settings, ["indexer"], 0.5)) == []
    finally:
        stop.set()
        thread.join(30)
        index.close()


# -- a full disk --------------------------------------------------------------------------------------------------

#: `ragbus worker indexer` whose file-size limit SIGUSR2 toggles: nothing (the disk is full) / unlimited.
DISK_LIMITED_WORKER = r"""
import resource, signal, sys
from ragbus import cli

def toggle(*_):
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 if soft == resource.RLIM_INFINITY else hard, hard))

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a full disk fails the write; it does not kill the writer
signal.signal(signal.SIGUSR2, toggle)
sys.argv = ["ragbus", "worker", "indexer"]
cli.main()
"""


def _health(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            return dict(json.loads(r.read())["stages"][0])
    except urllib.error.HTTPError as exc:  # 503 while broken
        return dict(json.loads(exc.read())["stages"][0])


def test_the_indexer_pauses_on_a_full_disk_and_resumes_when_space_returns(
        broker: str, settings_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from infra.models.embedder import embedding_dim
    from ragbus import wiring

    port = free_port()
    settings = settings_factory(broker, RAGBUS_METRICS_PORT=str(port), RAGBUS_LOG_FORMAT="json", **FAST)
    ensure_topics(settings)
    dim = embedding_dim(settings.embedder.model)
    wiring.build_store(settings).close()  # the schemas exist before the disk fills
    wiring.build_index(settings, dim).close()
    before, expected_before = corpus(tmp_path, 6, "a", dim)
    during, expected_during = corpus(tmp_path, 3, "b", dim)
    worker = subprocess.Popen([sys.executable, "-c", DISK_LIMITED_WORKER], cwd=ROOT, env=dict(os.environ),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    output: list[bytes] = []
    threading.Thread(target=lambda: output.extend(worker.stdout or []), daemon=True).start()
    store = SqliteDocumentStore(settings.data_dir / "ragbus.sqlite")
    try:
        wait_for_port(port, 60)
        publish(settings, before)
        wait_until(lambda: indexed(store, expected_before) == len(expected_before), 90, "the first documents")
        wait_until(lambda: _committed(settings) == _high(settings), 30, "the indexer's offsets committed")
        committed = _committed(settings)
        worker.send_signal(signal.SIGUSR2)  # the disk is full
        time.sleep(0.5)
        publish(settings, during, gap_s=0.5)  # a trickle: each its own batch, as documents arrive one by one
        wait_until(lambda: _health(port)["state"] == "broken", 60, "the indexer to pause")
        reason = str(_health(port)["broken"])
        assert "cannot write" in reason and "EFBIG" in reason or "SQLITE_" in reason, reason
        time.sleep(2)
        assert _committed(settings) == committed  # nothing committed past what was written
        assert indexed(store, expected_during) == 0
        worker.send_signal(signal.SIGUSR2)  # space returns
        wait_until(lambda: indexed(store, expected_during) == len(expected_during), 60, "the rest indexed")
        wait_until(lambda: _health(port)["state"] != "broken", 30, "the indexer recovered")
        index = LanceVectorIndex(settings.data_dir / "lance", dim)
        assert_exactly_indexed(store, index, expected_before | expected_during)
        assert list(list_dead_letters(settings, ["indexer"], 0.5)) == []  # no good event was dead-lettered
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        print(b"".join(output[-200:]).decode(errors="replace")[-20_000:])


def _committed(settings: Settings) -> dict[int, int | None]:
    [group] = group_lags(settings, ("indexer",))
    return {p.partition: p.committed for p in group.partitions}


def _high(settings: Settings) -> dict[int, int | None]:
    [group] = group_lags(settings, ("indexer",))
    return {p.partition: (p.high if p.high else None) for p in group.partitions}
