"""confluent-kafka factories: producer, consumer, admin, topic provisioning, dead-lettering.

All clients share one base configuration built from `KafkaSettings`. Consumers never auto-commit:
the runner commits after the stage's effects are durable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, TopicMetadata  # type: ignore[attr-defined]
from pydantic import BaseModel

from engine.broker import lost
from engine.records import Headers, SourceRecord
from engine.serde import encode, headers_for
from infra.settings import Settings
from kernel.errors import ConfigurationError, RetryableError
from schemas.stages import PIPELINE
from schemas.topics import TopicSpec


def bootstrap(settings: Settings) -> str:
    servers = settings.resolve_bootstrap()
    gone = lost(settings.broker_file()) if not settings.kafka.bootstrap_servers else None
    if gone:
        raise ConfigurationError(gone)
    if not servers:
        raise ConfigurationError(
            "no Kafka broker configured: start one with `ragbus up` (embedded) or set "
            "RAGBUS_KAFKA_BOOTSTRAP_SERVERS=host:port"
        )
    return servers


#: A librdkafka setting's value as confluent-kafka takes it: a scalar, the logger, or a callback.
ConfigValue = str | int | float | bool | logging.Logger | Callable[..., None]


def base_config(settings: Settings) -> dict[str, Any]:
    """Any: confluent-kafka's AdminClient is annotated for scalar values only, but takes the logger as its
    Consumer and Producer do."""
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


def partitions(settings: Settings, spec: TopicSpec) -> int:
    """How many partitions `spec` has in this deployment: per-topic setting, else the registry's own number
    (dead-letter topics), else RAGBUS_KAFKA_PARTITIONS."""
    override = settings.kafka.topic_partitions.get(spec.name)
    if override is not None:
        return override
    return spec.partitions if spec.partitions is not None else settings.kafka.partitions


def _partitions_setting(settings: Settings, spec: TopicSpec) -> str:
    if spec.name in settings.kafka.topic_partitions:
        return f'RAGBUS_KAFKA_TOPIC_PARTITIONS["{spec.name}"]'
    return "ragbus's registry" if spec.partitions is not None else "RAGBUS_KAFKA_PARTITIONS"


def _check_topic_settings(settings: Settings) -> None:
    known = {spec.name for spec in PIPELINE.topics()}
    for name, count in settings.kafka.topic_partitions.items():
        if name not in known:
            raise ConfigurationError(f"RAGBUS_KAFKA_TOPIC_PARTITIONS names {name!r}, which is no ragbus topic; "
                                     f"topics are {', '.join(sorted(known))}")
        if count < 1:
            raise ConfigurationError(f'RAGBUS_KAFKA_TOPIC_PARTITIONS["{name}"] must be at least 1, not {count}')


def topic_mismatches(settings: Settings, existing: dict[str, TopicMetadata], specs: list[TopicSpec]) -> list[str]:
    """Existing topics whose partition count differs from what the settings ask for, as readable phrases."""
    out = []
    for spec in specs:
        name = topic_name(settings, spec)
        if name in existing:
            have, want = len(existing[name].partitions), partitions(settings, spec)
            if have != want:
                out.append(f"{name} has {have} partitions, {_partitions_setting(settings, spec)} asks for {want}")
    return out


def _mismatch_error(found: list[str]) -> ConfigurationError:
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return ConfigurationError(
        f"existing topics differ from the settings: {found[0]}{more}. Partitions cannot be changed in place "
        "without moving documents to other partitions (which breaks their order): set the partition settings "
        "to match the topics, or drain and recreate the topics, or use a new RAGBUS_KAFKA_TOPIC_PREFIX")


def ensure_topics(settings: Settings, specs: list[TopicSpec] | None = None, timeout_s: float = 15.0) -> list[str]:
    """Create every topic with its partitions, replication and config; existing topics are checked, never
    altered, and a partition count that differs from the settings is an error that says what to do."""
    _check_topic_settings(settings)
    specs = specs if specs is not None else PIPELINE.topics()
    admin = AdminClient(base_config(settings))
    existing = admin.list_topics(timeout=timeout_s).topics
    found = topic_mismatches(settings, existing, specs)
    if found:
        raise _mismatch_error(found)
    created: list[str] = []
    wanted = [NewTopic(topic_name(settings, spec), num_partitions=partitions(settings, spec),
                       replication_factor=settings.kafka.replication_factor, config=spec.config)
              for spec in specs if topic_name(settings, spec) not in existing]
    if wanted:
        for name, fut in admin.create_topics(wanted, operation_timeout=timeout_s).items():
            try:
                fut.result()
                created.append(name)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise ConfigurationError(f"could not create topic {name}: {exc.args[0].str()}") from exc
    return created


def verify_topics(settings: Settings, specs: list[TopicSpec], timeout_s: float = 15.0) -> None:
    """At a worker's start: its topics exist with the partitions the settings say (faust agents crash-loop
    on a mismatch, and a missing topic is an operator's step not taken)."""
    _check_topic_settings(settings)
    existing = AdminClient(base_config(settings)).list_topics(timeout=timeout_s).topics
    missing = [topic_name(settings, s) for s in specs if topic_name(settings, s) not in existing]
    if missing:
        raise ConfigurationError(f"topic {missing[0]} does not exist: run `ragbus topics create` with the same "
                                 "RAGBUS_KAFKA_* settings first")
    found = topic_mismatches(settings, existing, specs)
    if found:
        raise _mismatch_error(found)


def partition_ids(client: Consumer | AdminClient, topic: str, timeout_s: float = 10.0) -> list[int]:
    """The partitions a topic really has (none if it does not exist), from the cluster's metadata."""
    meta = client.list_topics(topic, timeout=timeout_s).topics.get(topic)
    return sorted(meta.partitions) if meta is not None and meta.error is None else []


def make_consumer(settings: Settings, group_id: str | None, **overrides: ConfigValue) -> Consumer:
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

    def __init__(self, settings: Settings, **overrides: ConfigValue) -> None:
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


def read_from_start(settings: Settings, spec: TopicSpec, idle_s: float, max_messages: int = 500) -> Iterator[Message]:
    """Every message of a topic from its first offset, until none arrives for `idle_s` (client errors skipped).
    For listings and audits: no consumer group, nothing committed."""
    consumer = make_consumer(settings, None)
    name = topic_name(settings, spec)
    consumer.assign([TopicPartition(name, p, 0) for p in partition_ids(consumer, name)])
    try:
        while batch := consumer.consume(max_messages, idle_s):
            yield from (m for m in batch if m.error() is None)
    finally:
        consumer.close()


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
