"""Follow topics from (about) their end without a consumer group: replies to one client's requests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from confluent_kafka import TopicPartition

from engine.clients import consume_batch, make_consumer, partition_ids, topic_name
from engine.serde import decode
from infra.settings import Settings
from kernel.errors import PoisonMessageError
from schemas.topics import TopicSpec

#: Most messages taken per poll.
POLL_MAX = 500


class Tail:
    """Reads one or more topics from (about) their current end, without a consumer group (no join delay).

    Start offsets come from the high-water mark before anything is published, so nothing published
    afterwards is missed; on Tansu the mark may be a little early, which only re-reads a few events.
    One consumer follows every topic given, so one `poll` waits on all of them at once, and returns as
    soon as a reply is there.
    """

    def __init__(self, settings: Settings, spec: TopicSpec, *more: TopicSpec, from_start: bool = False) -> None:
        self._specs = {topic_name(settings, s): s for s in (spec, *more)}
        self._consumer = make_consumer(settings, None)
        parts = []
        for name in self._specs:
            for p in partition_ids(self._consumer, name):
                low, high = self._consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)
                parts.append(TopicPartition(name, p, low if from_start else high))
        self._consumer.assign(parts)

    def poll(self, timeout_s: float) -> Iterator[Any]:
        """Events that arrived: returns as soon as there is one (waiting at most `timeout_s` for it)."""
        for msg in consume_batch(self._consumer, POLL_MAX, timeout_s):
            if msg.error() is not None:
                continue
            try:
                yield decode(self._specs[msg.topic() or ""], msg.value())
            except PoisonMessageError:
                continue  # not ours to judge here: the stage that consumes this topic dead-letters it

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> Tail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def poll_raw(self, timeout_s: float) -> int:
        """How many messages arrived (any content): for counting, e.g. dead letters."""
        return sum(1 for msg in consume_batch(self._consumer, POLL_MAX, timeout_s) if msg.error() is None)
