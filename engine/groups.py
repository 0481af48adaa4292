"""Consumer-group lag read from Kafka itself, for every stage's group, so `ragbus status` tells the truth
on a cluster and not only about the processes on its own machine.

Lag of a partition = its high-water mark minus the group's committed offset (the next offset the group
will read); a partition the group never committed starts at the log start, so its lag is every record
still in the log. Committed offsets come from OffsetFetch (`list_consumer_group_offsets`).

High-water marks do NOT come from ListOffsets(latest) (`AdminClient.list_offsets`, or
`get_watermark_offsets` without `cached=True`): Tansu, the local broker, answers it wrongly (the last
batch's base offset + 1). Every broker's fetch response carries the partition's high-water mark and log
start offset, so a group-less consumer is assigned at the committed offsets, fetches once (at most one
small batch per partition, thrown away) and reads the marks librdkafka cached from that response. It
joins no group and commits nothing, so it disturbs no stage.

Tansu also answers DescribeGroups with no members for a group whose consumers are running; a member
count is therefore reported only when the broker gives one (real Kafka does).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from infra.settings import Settings
from schemas.stages import PIPELINE

from .clients import base_config, make_consumer, partition_ids, topic_name

#: librdkafka's "no offset" (an uncommitted partition, a mark not yet known).
_NONE = -1001


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    #: The group's committed offset (next to read), None if it never committed this partition.
    committed: int | None
    #: Log start and high-water mark; None when the broker did not answer in time.
    low: int | None
    high: int | None

    @property
    def lag(self) -> int | None:
        if self.high is None:
            return None
        start = self.committed if self.committed is not None else self.low
        return max(0, self.high - (start or 0))


@dataclass(frozen=True)
class GroupLag:
    stage: str
    group: str
    #: The broker's word for the group: stable, empty (no consumer running), preparing_rebalance, dead, ...
    state: str
    #: Consumers in the group, when the broker reports them (see the module docstring).
    members: int | None
    partitions: tuple[PartitionLag, ...]

    @property
    def lag(self) -> int | None:
        """Total lag, or None when a partition's high-water mark is unknown."""
        lags = [p.lag for p in self.partitions]
        return None if any(x is None for x in lags) else sum(x for x in lags if x is not None)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"lag": self.lag, "partitions": [asdict(p) | {"lag": p.lag} for p in self.partitions]}


def group_id(settings: Settings, stage: str) -> str:
    """The consumer group of a stage: the same name in both runtimes (faust uses it as its app id)."""
    return f"{settings.kafka.topic_prefix}{stage}"


def group_lags(settings: Settings, stages: tuple[str, ...] | None = None, timeout_s: float = 10.0) -> list[GroupLag]:
    """The lag of each stage's group (every declared stage's by default) on the topic it reads."""
    stages = stages if stages is not None else PIPELINE.names()
    admin = AdminClient(base_config(settings))
    groups = {stage: group_id(settings, stage) for stage in stages}
    sources = {stage: topic_name(settings, PIPELINE[stage].reads) for stage in stages}
    parts = {stage: [TopicPartition(source, p) for p in partition_ids(admin, source, timeout_s)]
             for stage, source in sources.items()}
    committed: dict[tuple[str, str, int], int] = {}  # (group, topic, partition) -> offset
    for stage, group in groups.items():
        if not parts[stage]:
            continue
        request = [ConsumerGroupTopicPartitions(group, parts[stage])]
        answer = admin.list_consumer_group_offsets(request, request_timeout=timeout_s)[group].result()
        for tp in answer.topic_partitions:
            if tp.error is None and tp.offset >= 0:
                committed[(group, tp.topic, tp.partition)] = tp.offset
    marks = _marks(settings, [tp for stage in stages for tp in parts[stage]],
                   {(t, p): o for (_, t, p), o in committed.items()}, timeout_s)
    states = _states(admin, list(groups.values()), timeout_s)
    out = []
    for stage, group in groups.items():
        state, members = states.get(group, ("unknown", None))
        rows = tuple(PartitionLag(tp.topic, tp.partition, committed.get((group, tp.topic, tp.partition)),
                                  *marks.get((tp.topic, tp.partition), (None, None)))
                     for tp in parts[stage])
        out.append(GroupLag(stage, group, state, members, rows))
    return out


def _marks(settings: Settings, parts: list[TopicPartition], start: dict[tuple[str, int], int],
           timeout_s: float) -> dict[tuple[str, int], tuple[int, int]]:
    """Log start and high-water mark of each partition, from one fetch (see the module docstring)."""
    if not parts:
        return {}
    consumer = make_consumer(settings, None, **{"fetch.wait.max.ms": 10, "max.partition.fetch.bytes": 1024,
                                                "queued.min.messages": 1})
    try:
        consumer.assign([TopicPartition(tp.topic, tp.partition, start.get((tp.topic, tp.partition), -2))
                         for tp in parts])
        marks: dict[tuple[str, int], tuple[int, int]] = {}
        deadline = time.monotonic() + timeout_s
        while len(marks) < len(parts) and time.monotonic() < deadline:
            consumer.consume(500, 0.05)
            for tp in parts:
                low, high = consumer.get_watermark_offsets(tp, cached=True)
                if high != _NONE and high >= 0:
                    marks[(tp.topic, tp.partition)] = (max(low, 0), high)
        return marks
    finally:
        consumer.close()


def _states(admin: AdminClient, groups: list[str], timeout_s: float) -> dict[str, tuple[str, int | None]]:
    out: dict[str, tuple[str, int | None]] = {}
    for group, future in admin.describe_consumer_groups(groups, request_timeout=timeout_s).items():
        try:
            desc = future.result()
        except KafkaException:
            continue
        state = desc.state.name.lower() if desc.state is not None else "unknown"
        members = len(desc.members) if desc.members else None
        out[group] = (state, members)
    return out
