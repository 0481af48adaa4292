"""Runs a Stage on a confluent-kafka consumer: for stages that write to the outside world.

Checkpoint order (Quix-style): poll a batch (a lone event at once, a burst as one batch: `consume_batch`)
-> the delivery policy (decode, the stage's writes, outputs and dead letters decided) -> produce them ->
producer flush (durable) -> commit offsets. A crash anywhere before the commit redelivers the batch, and
stages write idempotently.

This module is only the transport. What happens to a batch (retries, dead letters, isolating the event
that breaks it, the failure breaker) is the delivery policy's (delivery.py), shared with the faust
runtime. While the policy waits (backoff, a broken stage probing), the partitions are paused and the
consumer keeps polling, so it stays in its group but fetches nothing: memory stays bounded at one batch
however far behind it falls. If a rebalance revokes the partitions meanwhile, or the stage is asked to
stop, the batch is abandoned uncommitted and its next owner processes it again. Between batches nothing
is buffered, so a revocation there needs no work at all. If the outputs cannot be delivered, the
consumer seeks back to the batch's first offsets, so no later commit can pass over it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from infra.ops import logs
from infra.ops.health import Health
from infra.settings import Settings
from kernel.errors import ConfigurationError, RetryableError
from schemas.stages import Runtime

from .clients import EventProducer, commit_offsets, consume_batch, make_consumer, topic_name
from .delivery import BatchPolicy
from .records import SourceRecord, describe

log = logs.get(__name__)
#: Client errors a broker outage repeats many times a second: rate-limited (infra/ops/logs.py).
client_log = logs.get("engine.client")
LAG_EVERY_S = 2.0
#: librdkafka statistics (broker connection states, for readiness) this often.
STATS_EVERY_MS = 5000


class ConsumerRunner:
    def __init__(self, settings: Settings, policy: BatchPolicy, producer: EventProducer,
                 health: Health | None = None) -> None:
        if policy.stage.spec.runtime is not Runtime.CONSUMER:
            raise ConfigurationError(f"the {policy.stage.name} stage is declared to run on {policy.stage.spec.runtime} "
                                     "(schemas/stages.py), not on a confluent-kafka consumer")
        self._settings = settings
        self._policy = policy
        self._stage = policy.stage
        self._producer = producer
        self._health = health
        self._revoked = False  # set by the rebalance callback; read between polls and while waiting
        self._committed: dict[tuple[str, int], int] = {}
        #: Where the group stood when a partition was assigned (its committed offset, else the log start).
        self._start: dict[tuple[str, int], int] = {}
        self._lag_at = 0.0
        self.batches = 0

    def run(self, stop: threading.Event) -> None:
        consumer = make_consumer(self._settings, f"{self._settings.kafka.topic_prefix}{self._stage.name}",
                                 error_cb=self._on_error, stats_cb=self._on_stats,
                                 **{"statistics.interval.ms": STATS_EVERY_MS,
                                    "fetch.wait.max.ms": self._settings.fetch_wait_ms(self._stage.spec.waited_on)})

        def on_assign(_: Consumer, partitions: list[TopicPartition]) -> None:
            log.info("partitions assigned", stage=self._stage.name, partitions=[p.partition for p in partitions])
            if self._health is not None:
                self._health.assigned([(p.topic, p.partition) for p in partitions])

        def on_revoke(_: Consumer, partitions: list[TopicPartition]) -> None:
            self._revoked = True
            self._start.clear()  # a later owner may commit meanwhile: read again on the next assignment
            self._committed.clear()
            log.info("partitions revoked", stage=self._stage.name, partitions=[p.partition for p in partitions])
            if self._health is not None:
                self._health.revoked()

        source = topic_name(self._settings, self._stage.source)
        consumer.subscribe([source], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_revoke)
        log.info("stage started", stage=self._stage.name, topic=source)
        try:
            while not stop.is_set():
                if self._health is not None:
                    self._health.tick()
                messages = consume_batch(consumer, self._stage.max_batch, self._settings.kafka.poll_timeout_s,
                                         self._stage.window_s)
                self._revoked = False  # nothing was buffered across that poll
                records = self._records(messages)
                if records:
                    self._report_lag(consumer, now=True)  # the lag this batch is, before it may hang
                    self._handle(consumer, records, stop)
                self._report_lag(consumer)
        finally:
            if self._health is not None:
                self._health.remove()
            consumer.close()  # leaves the group at once, so the partitions move without a session timeout
            log.info("stage stopped", stage=self._stage.name)

    def _records(self, messages: list[Message]) -> list[SourceRecord]:
        records = []
        for msg in messages:
            err = msg.error()
            if err is None:
                records.append(SourceRecord.of(msg))
            elif err.fatal():
                raise KafkaException(err)
            else:
                client_log.warning("consumer error", stage=self._stage.name, error=err.str())
        return records

    def _on_error(self, err: KafkaError) -> None:
        """librdkafka's error callback: the connection state for readiness (the details are in its log)."""
        if err.code() == KafkaError._ALL_BROKERS_DOWN and self._health is not None:
            self._health.connection(False, err.str())
        if err.fatal():
            client_log.error("fatal Kafka client error", stage=self._stage.name, error=err.str())

    def _on_stats(self, raw: str) -> None:
        """librdkafka's statistics: connected again once a broker connection is up."""
        if self._health is None:
            return
        try:
            brokers = json.loads(raw).get("brokers", {}).values()
        except ValueError:
            return
        up = any(b.get("state") == "UP" for b in brokers if b.get("nodeid", -1) >= 0)
        self._health.connection(up, None if up else "no broker connection is up")

    def _handle(self, consumer: Consumer, records: list[SourceRecord], stop: threading.Event) -> None:
        started = time.perf_counter()
        done = self._policy.process(records, lambda seconds: self._wait(consumer, seconds, stop))
        if done is None:
            log.warning("batch abandoned uncommitted (stopping or partitions revoked)", stage=self._stage.name,
                        batch=describe(records))
            return
        cpu = self._policy.cpu_step("deliver")
        try:
            for send in done.sends:
                self._producer.send_raw(send.topic, send.key, send.value, send.headers)
            self._producer.flush()
        except (RetryableError, KafkaException, BufferError) as exc:
            log.error("outputs not delivered; the batch will be consumed again", stage=self._stage.name,
                      batch=describe(records), error=str(exc)[:300])
            self._rewind(consumer, records)
            return
        try:
            commit_offsets(consumer, records)
        except KafkaException as exc:  # e.g. the partitions were revoked meanwhile: redelivered, idempotent
            log.warning("commit failed; batch will be redelivered", stage=self._stage.name, batch=describe(records),
                        error=str(exc))
            return
        for r in records:
            key = (r.topic, r.partition)
            self._committed[key] = max(self._committed.get(key, 0), r.offset + 1)
        cpu(None)
        self._report_lag(consumer, now=True)  # the committed offsets moved: say so at once
        self._policy.finished(records, done, started)
        self.batches += 1

    @staticmethod
    def _rewind(consumer: Consumer, records: Sequence[SourceRecord]) -> None:
        first: dict[tuple[str, int], int] = {}
        for r in records:
            first[(r.topic, r.partition)] = min(first.get((r.topic, r.partition), r.offset), r.offset)
        for (topic, partition), offset in first.items():
            consumer.seek(TopicPartition(topic, partition, offset))

    def _wait(self, consumer: Consumer, seconds: float, stop: threading.Event) -> bool:
        """Wait with the partitions paused, still polling; False if the batch must be abandoned."""
        assignment = consumer.assignment()
        consumer.pause(assignment)
        try:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                if self._health is not None:
                    self._health.tick()
                self._report_lag(consumer)
                if stop.is_set() or self._revoked:
                    return False
                for msg in consumer.consume(1, min(0.2, max(0.0, deadline - time.monotonic()))):
                    if msg.error() is None:  # prefetched before the pause: rewind, so nothing is skipped
                        record = SourceRecord.of(msg)
                        consumer.seek(TopicPartition(record.topic, record.partition, record.offset))
            return not (stop.is_set() or self._revoked)
        finally:
            if not self._revoked:
                consumer.resume(assignment)

    def _report_lag(self, consumer: Consumer, now: bool = False) -> None:
        """Per partition: the committed offset (this runner's last commit, else the group's at assignment)
        and the fetch high-water mark, for lag and stall detection."""
        if self._health is None or (not now and time.monotonic() - self._lag_at < LAG_EVERY_S):
            return
        self._lag_at = time.monotonic()
        assignment = consumer.assignment()
        self._fetch_start(consumer, [tp for tp in assignment if (tp.topic, tp.partition) not in self._start])
        offsets: dict[tuple[str, int], tuple[int | None, int]] = {}
        for tp in assignment:
            key = (tp.topic, tp.partition)
            _, high = consumer.get_watermark_offsets(tp, cached=True)
            committed = self._committed.get(key, self._start.get(key))
            if high >= 0 and committed is not None:
                offsets[key] = (committed, high)
        self._health.observe(offsets)

    def _fetch_start(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if not partitions:
            return
        try:
            committed = consumer.committed(partitions, timeout=5)
        except KafkaException as exc:  # the coordinator is busy (rebalancing): next round
            client_log.warning("could not read committed offsets", stage=self._stage.name, error=str(exc)[:200])
            return
        for tp in committed:
            if tp.offset >= 0:
                self._start[(tp.topic, tp.partition)] = tp.offset
            else:  # nothing committed yet: the group starts at the log start (auto.offset.reset=earliest)
                low, _ = consumer.get_watermark_offsets(tp, cached=True)
                if low >= 0:
                    self._start[(tp.topic, tp.partition)] = low
