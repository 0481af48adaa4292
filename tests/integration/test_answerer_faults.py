"""The answerer stage on the local broker, wired as `ragbus worker answerer` wires it (ragbus.worker.consumer),
with Claude's SDK talking HTTP to a local Messages API (tests/messages_api.py): every query gets its one
final answer within its deadline whatever the model does, and queries whose deadline passed while the stage
was paused (its document store down) are answered late, as expired, never dropped."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consumers.answerer import Answerer
from engine.clients import EventProducer, ensure_topics
from infra.ops.health import Health
from infra.ops.metrics import Metrics
from infra.settings import Settings
from infra.stores.sqlite import SqliteDocumentStore
from kernel.errors import RetryableError
from ragbus.worker import consumer
from schemas.events import AnswerGenerated, QueryRequested
from schemas.topics import TOPICS
from tests.messages_api import MessagesApi
from tests.unit.test_stages import Pipeline, doc

from .helpers import read_all, runner_for, wait_until

pytestmark = pytest.mark.broker


@pytest.fixture
def api() -> Iterator[MessagesApi]:
    with MessagesApi() as server:
        yield server


def ask(settings: Settings, texts: list[str], deadline_ms: int) -> list[QueryRequested]:
    producer = EventProducer(settings)
    queries = [QueryRequested(text=t, deadline_ms=deadline_ms) for t in texts]
    for q in queries:
        producer.send(TOPICS.queries, q.query_id, q)
    producer.flush()
    return queries


def answers(settings: Settings, queries: list[QueryRequested], timeout_s: float) -> dict[str, AnswerGenerated]:
    """query id -> its final answer; fails on two distinct answers for one query."""
    got: dict[str, AnswerGenerated] = {}
    for m in read_all(settings, TOPICS.answers, 10_000, timeout_s=0.1):
        a = AnswerGenerated.model_validate_json(m.value())
        assert got.get(a.query_id, a).event_id == a.event_id, "two different final answers for one query"
        got[a.query_id] = a
    wanted = {q.query_id for q in queries}
    return {k: v for k, v in got.items() if k in wanted}


def start(runner: Any) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    return stop, thread


def test_a_revoked_key_still_answers_every_query_in_time_and_recovers(
        broker: str, settings_factory, api: MessagesApi) -> None:  # type: ignore[no-untyped-def]
    settings = settings_factory(broker, RAGBUS_ANTHROPIC_API_KEY="sk-test", RAGBUS_ANTHROPIC_BASE_URL=api.url,
                                RAGBUS_ANTHROPIC_MAX_RETRIES="0", RAGBUS_ANSWERER_MODEL_PROBE_S="1")
    ensure_topics(settings)
    metrics = Metrics(stages=["answerer"])
    health = Health("answerer", metrics)
    stop, thread = start(consumer(settings, "answerer", metrics, health))  # the key is fine at start-up
    try:
        api.fail = (401, "authentication_error")  # then it is revoked
        deadline_ms = 15_000
        queries = ask(settings, [f"How is order kept, take {i}?" for i in range(6)], deadline_ms)
        wait_until(lambda: len(answers(settings, queries, 1)) == len(queries), 45, "an answer to every query")
        got = answers(settings, queries, 1)
        for q in queries:
            a = got[q.query_id]
            assert a.degraded and "401" in a.degraded_reason and "RAGBUS_ANTHROPIC_API_KEY" in a.degraded_reason
            assert (a.occurred_at - q.occurred_at).total_seconds() * 1000 < deadline_ms
        snap = health.snapshot()
        assert snap["state"] == "degraded" and "RAGBUS_ANTHROPIC_API_KEY" in snap["degraded"]
        assert metrics.registry.get_sample_value("ragbus_stage_degraded", {"stage": "answerer"}) == 1
        assert metrics.registry.get_sample_value("ragbus_stage_broken", {"stage": "answerer"}) in (None, 0)

        api.fail = None  # a valid key again: the next query after the probe interval is the probe
        time.sleep(1.2)
        later = ask(settings, ["How is order kept now?"], deadline_ms)
        wait_until(lambda: later[0].query_id in answers(settings, later, 1), 30, "the probe query's answer")
        assert not answers(settings, later, 1)[later[0].query_id].degraded
        assert health.snapshot()["state"] == "ok"
        assert metrics.registry.get_sample_value("ragbus_stage_degraded", {"stage": "answerer"}) == 0
    finally:
        stop.set()
        thread.join(20)


class DownStore:
    """The answerer's document store, down (RetryableError) until `up` is set."""

    def __init__(self, store: SqliteDocumentStore) -> None:
        self._store = store
        self.up = threading.Event()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            if not self.up.is_set():
                raise RetryableError("document store: connection refused")
            return method(*args, **kwargs)
        return call


def test_queries_that_expired_while_the_answerer_was_paused_are_answered_late_as_expired(
        broker: str, settings_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = settings_factory(broker, RAGBUS_DELIVERY_RETRY_ATTEMPTS="2", RAGBUS_DELIVERY_BACKOFF_INITIAL_S="0.05",
                                RAGBUS_DELIVERY_PROBE_INTERVAL_S="0.5", RAGBUS_DELIVERY_PROBE_MAX_S="1")
    ensure_topics(settings)
    pipe = Pipeline(tmp_path / "p")
    pipe.run(doc(1, "Kafka keeps the order of messages within one partition.", doc_id="kafka"))
    store, metrics = DownStore(pipe.store), Metrics(stages=["answerer"])
    health = Health("answerer", metrics)
    from retrieval.extractive import ExtractiveAnswerer

    answerer = Answerer(pipe.retriever(), ExtractiveAnswerer(), store, metrics, lambda out: None,  # type: ignore[arg-type]
                        cache=pipe.answer_cache)
    stop, thread = start(runner_for(settings, answerer.stage(16, 0.0), metrics, health))
    try:
        queries = ask(settings, [f"How is order kept, {i}?" for i in range(5)], deadline_ms=2000)
        wait_until(lambda: health.broken_reason is not None, 30, "the answerer to pause on its store")
        time.sleep(3)  # every query's deadline passes while the stage is paused
        assert answers(settings, queries, 1) == {}
        store.up.set()
        wait_until(lambda: len(answers(settings, queries, 1)) == len(queries), 30, "every query answered")
        for a in answers(settings, queries, 1).values():
            assert a.degraded and a.degraded_reason.startswith("expired: the query's deadline (2000 ms) passed")
        assert metrics.registry.get_sample_value("ragbus_answers_total", {"status": "expired"}) == len(queries)
        assert health.broken_reason is None
    finally:
        stop.set()
        thread.join(20)
