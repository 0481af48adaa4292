"""Reading and replaying dead letters.

A dead letter's value and key are the original bytes; the reason and origin travel in
`ragbus-dlq-*` headers. Replay re-publishes value, key and the original headers to the topic the
message came from, after a fix, under a consumer group of its own so each dead letter is replayed
once (at least once: a replay interrupted before its commit may publish a few twice, and every stage
is idempotent).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime

from confluent_kafka import Message

from engine.clients import EventProducer, commit_offsets, make_consumer, read_from_start, topic_name
from engine.records import SourceRecord, headers_of
from infra.ops import logs
from infra.settings import Settings
from schemas.events import DeadLetter, utcnow
from schemas.headers import DLQ_PREFIX, REPLAYED_FROM
from schemas.stages import PIPELINE


def _dead_letter(msg: Message) -> DeadLetter:
    h = {k[len(DLQ_PREFIX):]: (v.encode() if isinstance(v, str) else v or b"").decode("utf-8", "replace")
         for k, v in headers_of(msg) if k.startswith(DLQ_PREFIX)}
    value = msg.value() or b""
    try:
        occurred = datetime.fromisoformat(h["occurred-at"])
    except (KeyError, ValueError):
        occurred = utcnow()
    return DeadLetter(
        stage=h.get("stage", "?"), topic=h.get("topic", "?"), partition=int(h.get("partition", -1)),
        offset=int(h.get("offset", -1)), error_type=h.get("error-type", "?"), reason=h.get("reason", ""),
        occurred_at=occurred, attempts=int(h.get("attempts", 1)),
        key=(msg.key() or b"").decode("utf-8", "replace") or None,
        value_preview=value[:200].decode("utf-8", "replace"))


def list_dead_letters(settings: Settings, stages: list[str] | None = None, idle_s: float = 1.0) -> Iterator[DeadLetter]:
    for stage in stages or list(PIPELINE.names()):
        yield from (_dead_letter(m) for m in read_from_start(settings, PIPELINE[stage].dead_letters, idle_s))


def replay(settings: Settings, stage: str, limit: int | None = None, idle_s: float = 3.0) -> int:
    """Re-publish the stage's dead letters to their original topics; returns how many.

    Only dead letters written before the replay started are replayed: one that fails again comes back
    to the dead-letter topic as a new record, and must wait for the next replay (no loop).
    """
    started = utcnow()
    spec = PIPELINE[stage].dead_letters
    consumer = make_consumer(settings, f"{settings.kafka.topic_prefix}dlq-replay-{stage}")
    consumer.subscribe([topic_name(settings, spec)])
    producer = EventProducer(settings)
    done = 0
    deadline = time.monotonic() + idle_s + settings.kafka.session_timeout_ms / 1000
    try:
        while (limit is None or done < limit) and time.monotonic() < deadline:
            batch = [m for m in consumer.consume(min(500, (limit or 500) - done), 0.5) if m.error() is None]
            newer = next((i for i, m in enumerate(batch) if _dead_letter(m).occurred_at >= started), None)
            if newer is not None:
                batch, limit = batch[:newer], done + newer  # the rest is for a later replay; not committed
            if not batch:
                continue
            for m in batch:
                origin = _dead_letter(m).topic
                kept = [(k, v) for k, v in headers_of(m) if not k.startswith(DLQ_PREFIX) and k != REPLAYED_FROM]
                where = logs.where(m.topic() or "", m.partition() or 0, m.offset() or 0).encode()
                producer.send_raw(origin, m.key(), m.value(), kept + [(REPLAYED_FROM, where)])
            producer.flush()
            commit_offsets(consumer, [SourceRecord.of(m) for m in batch])
            done += len(batch)
            deadline = time.monotonic() + idle_s
    finally:
        consumer.close()
    return done
