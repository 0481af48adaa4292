"""What a runner knows of a consumed message, and the dead letter it becomes when it cannot be processed.

A dead letter's key and value are the original bytes, so a replay re-publishes exactly what arrived;
its origin and reason travel in `ragbus-dlq-*` headers (stage, topic, partition, offset, error type,
reason, time, attempts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from confluent_kafka import Message

from infra.ops import logs
from schemas.events import utcnow
from schemas.headers import CORRELATION_ID, DLQ_PREFIX, dlq
from schemas.stages import StageSpec

Headers = list[tuple[str, str | bytes | None]]
#: Room left in a dead letter for its key and headers.
_DLQ_OVERHEAD = 64 * 1024


@dataclass(frozen=True)
class Send:
    """One message to produce: a stage output, a dead letter or a failure status."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers


@dataclass(frozen=True, eq=False)
class SourceRecord:
    """Where a message came from: enough to dead-letter it and to log `topic[partition]@offset`.
    Compared by identity: one record per consumed message."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers

    def where(self) -> str:
        return logs.where(self.topic, self.partition, self.offset)

    def correlation_id(self) -> str:
        for key, value in self.headers:
            if key == CORRELATION_ID:
                return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")
        return ""

    @classmethod
    def of(cls, msg: Message) -> SourceRecord:
        """From a confluent-kafka Message."""
        return cls(msg.topic() or "", msg.partition() or 0, msg.offset() or 0, msg.key(), msg.value(),
                   headers_of(msg))


def describe(records: Sequence[SourceRecord]) -> str:
    """Where a batch came from, for logs: `topic[0]@5..9 [2]@3` (offset ranges per partition)."""
    ranges: dict[tuple[str, int], tuple[int, int]] = {}
    for r in records:
        low, high = ranges.get((r.topic, r.partition), (r.offset, r.offset))
        ranges[(r.topic, r.partition)] = (min(low, r.offset), max(high, r.offset))
    parts, last_topic = [], None
    for (topic, partition), (low, high) in sorted(ranges.items()):
        span = f"{low}" if low == high else f"{low}..{high}"
        parts.append(logs.where(topic if topic != last_topic else "", partition, span))
        last_topic = topic
    return " ".join(parts)


def headers_of(msg: Message) -> Headers:
    raw = msg.headers() or []
    return list(raw.items()) if isinstance(raw, dict) else list(raw)


def dead_letter_headers(record: SourceRecord, stage: str, exc: BaseException, attempts: int = 1) -> Headers:
    fields = {
        "stage": stage,
        "topic": record.topic,
        "partition": str(record.partition),
        "offset": str(record.offset),
        "error-type": type(exc).__name__,
        "reason": str(exc)[:4000],
        "occurred-at": utcnow().isoformat(),
        "attempts": str(attempts),
    }
    kept: Headers = [(k, v) for k, v in record.headers if not k.startswith(DLQ_PREFIX)]
    return kept + [(dlq(k), v.encode()) for k, v in fields.items()]


def dead_letter(prefix: str, max_bytes: int, stage: StageSpec, record: SourceRecord, exc: BaseException,
                attempts: int = 1) -> Send:
    """(topic, key, value, headers) of a dead letter. The value is the original bytes, unless they are too
    large for any topic (the reason the event failed): then their head, with `ragbus-dlq-truncated`
    giving the original size, so the dead letter itself can always be written."""
    headers = dead_letter_headers(record, stage.name, exc, attempts)
    value = record.value
    limit = max_bytes - _DLQ_OVERHEAD
    if value is not None and len(value) > limit:
        headers.append((dlq("truncated"), str(len(value)).encode()))
        value = value[:limit]
    return Send(stage.dead_letters.physical(prefix), record.key, value, headers)


