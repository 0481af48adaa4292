"""confluent-kafka factories: producer, consumer, admin, topic provisioning, dead-lettering.

All clients share one base configuration built from `KafkaSettings`. Consumers never auto-commit:
the runner commits after the stage's effects are durable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from pydantic import BaseModel

from infra.kafka.records import Headers, SourceRecord
from infra.kafka.serde import encode, headers_for
from infra.settings import Settings
from kernel.errors import ConfigurationError, RetryableError
from schemas.topics import TOPICS, TopicSpec


def bootstrap(settings: Settings) -> str:
    servers = settings.resolve_bootstrap()
    if not servers:
        raise ConfigurationError(
            "no Kafka broker configured: start one with `ragbus up` (embedded) or set "
            "RAGBUS_KAFKA_BOOTSTRAP_SERVERS=host:port"
        )
    return servers


def base_config(settings: Settings) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "bootstrap.servers": bootstrap(settings),
        "message.max.bytes": settings.kafka.message_max_bytes,
        # librdkafka's own log lines go through Python logging (logger "librdkafka"), not raw stderr.
        "logger": logging.getLogger("librdkafka"),
    }
    cfg.update(settings.kafka.client_config)
    return cfg


def topic_name(settings: Settings, spec: TopicSpec) -> str:
    return spec.physical(settings.kafka.topic_prefix)


def check_reachable(settings: Settings, timeout_s: float = 5.0) -> None:
    """Fail fast with a message that says what to fix when the broker does not answer."""
    servers = bootstrap(settings)
    admin = AdminClient(base_config(settings))
    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise ConfigurationError(
            f"cannot reach Kafka at {servers} within {timeout_s:.0f}s: start `ragbus up` or fix "
            "RAGBUS_KAFKA_BOOTSTRAP_SERVERS"
        ) from exc


def ensure_topics(settings: Settings, specs: list[TopicSpec] | None = None, timeout_s: float = 15.0) -> list[str]:
    """Create every topic with its partitions and config; report a partition-count mismatch."""
    specs = specs if specs is not None else TOPICS.all()
    admin = AdminClient(base_config(settings))
    existing = admin.list_topics(timeout=timeout_s).topics
    created: list[str] = []
    wanted = []
    for spec in specs:
        name = topic_name(settings, spec)
        if name in existing:
            have = len(existing[name].partitions)
            if have != spec.partitions:
                raise ConfigurationError(
                    f"topic {name} has {have} partitions, ragbus declares {spec.partitions}: "
                    "recreate it or use another RAGBUS_KAFKA_TOPIC_PREFIX"
                )
            continue
        wanted.append(NewTopic(name, num_partitions=spec.partitions, replication_factor=-1, config=spec.config))
    if wanted:
        for name, fut in admin.create_topics(wanted, operation_timeout=timeout_s).items():
            try:
                fut.result()
                created.append(name)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise ConfigurationError(f"could not create topic {name}: {exc.args[0].str()}") from exc
    return created


def make_consumer(settings: Settings, group_id: str | None, **overrides: Any) -> Consumer:
    session = settings.kafka.session_timeout_ms
    cfg = base_config(settings) | {
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        # Tansu answers ListOffsets(latest) wrongly: always start from earliest + committed offsets.
        "auto.offset.reset": "earliest",
        "session.timeout.ms": session,
        "heartbeat.interval.ms": max(100, session // 3),
        "fetch.max.bytes": settings.kafka.message_max_bytes * 4,
        "max.partition.fetch.bytes": settings.kafka.message_max_bytes,
        "enable.partition.eof": False,
        "fetch.wait.max.ms": settings.fetch_wait_ms(),
    }
    cfg["group.id"] = group_id or f"ragbus-reader-{time.monotonic_ns()}"
    cfg.update(overrides)
    return Consumer(cfg)


class EventProducer:
    """An idempotent producer that tracks delivery failures: `flush()` raises if any send failed,
    so a caller never commits input offsets for output that did not reach the broker."""

    def __init__(self, settings: Settings, **overrides: Any) -> None:
        cfg = base_config(settings) | {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "none",
        }
        cfg.update(overrides)
        self._producer = Producer(cfg)
        self._settings = settings
        self._errors: list[str] = []
        self._lock = threading.Lock()

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            with self._lock:
                self._errors.append(f"{msg.topic()}: {err.str()}")

    def send_raw(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None = None) -> None:
        while True:
            try:
                self._producer.produce(topic, key=key, value=value, headers=headers or [],
                                       on_delivery=self._on_delivery)
                break
            except BufferError:  # local queue full: serve delivery reports, then try again
                self._producer.poll(0.1)
        self._producer.poll(0)

    def send(self, spec: TopicSpec, key: bytes | str | None, event: BaseModel,
             extra_headers: Headers | None = None) -> None:
        raw_key = key.encode() if isinstance(key, str) else key
        self.send_raw(topic_name(self._settings, spec), raw_key, encode(event),
                      headers_for(event) + (extra_headers or []))

    def flush(self, timeout_s: float = 30.0) -> None:
        remaining = self._producer.flush(timeout_s)
        with self._lock:
            errors, self._errors = self._errors, []
        if remaining:
            raise RetryableError(f"{remaining} messages not delivered within {timeout_s}s")
        if errors:
            raise RetryableError(f"{len(errors)} messages failed delivery, first: {errors[0]}")


def consume_batch(consumer: Consumer, max_messages: int, wait_s: float, linger_s: float = 0.0) -> list[Message]:
    """Up to `max_messages`: block at most `wait_s` for the first one, then take what is already there,
    waiting at most `linger_s` more for the batch to fill.

    `Consumer.consume(n, timeout)` returns early only when n messages arrived, so asking it for a batch
    with a timeout waits the whole timeout for a lone message: one query would wait for the batch
    window. Here a lone message is handed over at once, and a burst still arrives as one batch, since
    everything fetched meanwhile is already in the local queue.
    """
    messages = consumer.consume(max_messages, 0)  # what is already in the local queue
    if not messages:
        messages = consumer.consume(1, wait_s)
        if not messages:
            return []
    if len(messages) < max_messages:
        messages += consumer.consume(max_messages - len(messages), linger_s)
    return messages


def commit_offsets(consumer: Consumer, records: Sequence[SourceRecord]) -> None:
    """Commit the next offset of every partition seen in `records` (synchronously)."""
    latest: dict[tuple[str, int], int] = {}
    for r in records:
        key = (r.topic, r.partition)
        latest[key] = max(latest.get(key, -1), r.offset)
    if latest:
        consumer.commit(offsets=[TopicPartition(t, p, o + 1) for (t, p), o in latest.items()],
                        asynchronous=False)
