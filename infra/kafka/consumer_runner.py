"""The confluent-kafka poll loop for stages that write to the outside world.

Checkpoint order (Quix-style): poll a batch -> decode (undecodable -> dead letter) -> `sink.add()` each
event -> `sink.flush()` writes -> producer flush (outputs and dead letters durable) -> commit offsets.
A crash anywhere before the commit redelivers the batch, and sinks write idempotently.

A whole-batch RetryableError (the backend is down) retries the same batch with jittered exponential
backoff. Meanwhile the runner pauses its partitions and keeps polling (so it stays in the group but
fetches nothing), so memory stays bounded at one batch however far behind it falls. If a rebalance
revokes partitions during the backoff, or the stage is asked to stop, the batch is abandoned
uncommitted: the partitions' next owner processes it again, and the writes are idempotent.
Between batches nothing is buffered, so a revocation there needs no work at all.

Nothing is committed unfinished: an exception of any type out of decoding, `add` or `flush` is pinned
on the event that raises it (the batch is retried event by event) and that event is dead-lettered with
the exception as its reason. Anything that still escapes a batch (a bug in this loop, a fatal client
error) ends the loop before the commit, so the batch is redelivered to whoever consumes next.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

from confluent_kafka import KafkaException, TopicPartition

from infra.kafka.clients import EventProducer, SourceRecord, commit_offsets, make_consumer, send_dead_letter, topic_name
from infra.kafka.serde import decode
from infra.ops import logs
from infra.ops.health import Health
from infra.ops.metrics import Metrics, Outcome
from infra.settings import Settings
from kernel.errors import PoisonMessageError, RetryableError
from schemas.topics import TopicSpec

log = logs.get(__name__)

MAX_BACKOFF_S = 30.0
LAG_EVERY_S = 2.0


class Sink(Protocol):
    def add(self, event: Any, record: SourceRecord) -> None:
        """Buffer one event; raise PoisonMessageError if it can never be processed."""

    def flush(self) -> Sequence[tuple[SourceRecord, Any, Exception]]:
        """Write what was buffered; return per-record permanent failures, or raise RetryableError."""

    def discard(self) -> None:
        """Drop the buffer (the batch is abandoned and will be redelivered)."""


class ConsumerRunner:
    def __init__(self, settings: Settings, stage: str, source: TopicSpec, sink: Sink, metrics: Metrics,
                 producer: EventProducer, health: Health | None = None) -> None:
        self._health = health
        self._revoked = False  # set by the rebalance callback; read between polls and during backoff
        self._committed: dict[tuple[str, int], int] = {}
        self._lag_at = 0.0
        self._settings = settings
        self._stage = stage
        self._source = source
        self._sink = sink
        self._metrics = metrics
        self._producer = producer
        self.batches = 0

    def run(self, stop: threading.Event) -> None:
        consumer = make_consumer(self._settings, f"{self._settings.kafka.topic_prefix}{self._stage}")

        def on_revoke(_: Any, partitions: list[Any]) -> None:
            self._revoked = True
            log.info("partitions revoked", stage=self._stage, partitions=[p.partition for p in partitions])

        consumer.subscribe([topic_name(self._settings, self._source)], on_revoke=on_revoke)
        log.info("stage started", stage=self._stage, topic=topic_name(self._settings, self._source))
        try:
            while not stop.is_set():
                messages = consumer.consume(self._settings.kafka.poll_batch, self._settings.kafka.poll_timeout_s)
                self._revoked = False  # nothing was buffered across that poll
                if messages:
                    self._handle(consumer, messages, stop)
                self._report_lag(consumer)
        finally:
            if self._health is not None:
                self._health.remove()
            consumer.close()  # leaves the group at once, so the partitions move without a session timeout
            log.info("stage stopped", stage=self._stage)

    def _handle(self, consumer: Any, messages: list[Any], stop: threading.Event) -> None:
        started = time.perf_counter()
        records: list[SourceRecord] = []
        added: list[tuple[SourceRecord, Any]] = []
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                log.warning("consumer error", stage=self._stage, error=err.str())
                continue
            record = SourceRecord.of(msg)
            records.append(record)
            try:
                event = decode(self._source, record.value, self._settings.decode)
                self._sink.add(event, record)
                added.append((record, event))
            except PoisonMessageError as exc:
                self._dead(record, exc)
            except Exception as exc:  # a bug in the sink on this event: pinned on it, the rest go on
                self._crashed(record, exc)
                self._dead(record, exc)
        try:
            failures = self._flush_with_backoff(consumer, stop)
        except Exception as exc:
            log.error("batch failed unexpectedly; retrying its events one by one", stage=self._stage, error=repr(exc))
            self._sink.discard()
            failures = self._isolate(consumer, stop, added)
        if failures is None:
            return
        for record, _, error in failures:
            self._dead(record, error)
        try:
            self._producer.flush()
        except RetryableError as exc:
            log.error("outputs not delivered; batch left uncommitted", stage=self._stage, error=str(exc))
            return
        try:
            commit_offsets(consumer, records)
            for r in records:
                key = (r.topic, r.partition)
                self._committed[key] = max(self._committed.get(key, 0), r.offset + 1)
        except KafkaException as exc:  # e.g. the partitions were revoked meanwhile: redelivered, idempotent
            log.warning("commit failed; batch will be redelivered", stage=self._stage, error=str(exc))
        ok = len(records) - len(failures)
        self._metrics.events.labels(self._stage, Outcome.OK).inc(max(0, ok))
        self._metrics.batch_seconds.labels(self._stage).observe(time.perf_counter() - started)
        self._metrics.last_progress.labels(self._stage).set(time.time())
        if self._health is not None:
            self._health.progressed(len(records))
        self.batches += 1

    def _report_lag(self, consumer: Any) -> None:
        """Lag per partition: fetch high-water mark minus what this stage committed (or its position)."""
        if self._health is None or time.monotonic() - self._lag_at < LAG_EVERY_S:
            return
        self._lag_at = time.monotonic()
        lag = {}
        for tp in consumer.assignment():
            _, high = consumer.get_watermark_offsets(tp, cached=True)
            done = self._committed.get((tp.topic, tp.partition))
            if done is None:
                done = consumer.position([tp])[0].offset
            if high >= 0 and done is not None and done >= 0:
                lag[f"{tp.topic}[{tp.partition}]"] = max(0, high - done)
        self._health.set_lag(lag)

    def _isolate(self, consumer: Any, stop: threading.Event, added: list[tuple[SourceRecord, Any]]
                 ) -> list[tuple[SourceRecord, Any, Exception]] | None:
        """Flush each event alone; an event that still fails unexpectedly is poison (dead-lettered with the
        error), so one bad event can never stop the stage. Transient errors still back off as usual."""
        failures: list[tuple[SourceRecord, Any, Exception]] = []
        for record, event in added:
            try:
                self._sink.add(event, record)
                done = self._flush_with_backoff(consumer, stop)
            except Exception as exc:
                self._sink.discard()
                self._crashed(record, exc)
                done = [(record, event, exc)]
            if done is None:
                return None
            failures.extend(done)
        return failures

    def _flush_with_backoff(self, consumer: Any, stop: threading.Event
                            ) -> Sequence[tuple[SourceRecord, Any, Exception]] | None:
        attempt = 0
        while True:
            try:
                return self._sink.flush()
            except RetryableError as exc:
                attempt += 1
                self._metrics.events.labels(self._stage, Outcome.RETRIED).inc()
                delay = exc.retry_after or min(MAX_BACKOFF_S, 0.1 * 2 ** attempt) * (0.5 + random.random())
                log.warning("sink flush failed, backing off", stage=self._stage, attempt=attempt,
                            delay=round(delay, 2), error=str(exc)[:300])
                if not self._backoff(consumer, delay, stop):
                    self._sink.discard()
                    log.warning("batch abandoned uncommitted (stopping or partitions revoked)", stage=self._stage)
                    return None

    def _backoff(self, consumer: Any, delay: float, stop: threading.Event) -> bool:
        """Wait with the partitions paused, still polling; False if the batch must be abandoned."""
        assignment = consumer.assignment()
        consumer.pause(assignment)
        try:
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline:
                self._report_lag(consumer)
                if stop.is_set() or self._revoked:
                    return False
                for msg in consumer.consume(1, min(0.2, max(0.0, deadline - time.monotonic()))):
                    if msg.error() is None:  # prefetched before the pause: rewind, so nothing is skipped
                        consumer.seek(TopicPartition(msg.topic(), msg.partition(), msg.offset()))
            return not (stop.is_set() or self._revoked)
        finally:
            if not self._revoked:
                consumer.resume(assignment)

    def _crashed(self, record: SourceRecord, exc: BaseException) -> None:
        log.error("stage raised an unexpected error on an event; dead-lettering it", stage=self._stage,
                  where=record.where(), correlation_id=record.correlation_id(),
                  error=f"{type(exc).__name__}: {exc}"[:300])
        self._metrics.crashes.labels(self._stage).inc()
        if self._health is not None:
            self._health.crashed(record.where(), record.correlation_id(), exc)

    def _dead(self, record: SourceRecord, exc: Exception) -> None:
        log.warning("dead-lettered", stage=self._stage, where=record.where(), correlation_id=record.correlation_id(),
                    error=str(exc)[:300])
        self._metrics.events.labels(self._stage, Outcome.DEAD_LETTERED).inc()
        send_dead_letter(self._producer, self._settings, self._stage, record, exc)
