"""Scaling settings on a real broker: partitions per topic come from the settings, a mismatch with existing
topics is one line that says what to do, and consumer-group lag is read from Kafka itself (committed offsets
against fetch high-water marks), so `ragbus status` is true for processes on any machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable

import pytest
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from engine.clients import base_config, ensure_topics, make_consumer, partition_ids, topic_name, verify_topics
from engine.groups import group_id, group_lags
from infra.settings import Settings
from kernel.errors import ConfigurationError
from schemas.stages import PIPELINE
from schemas.topics import TOPICS
from tests.conftest import ROOT

pytestmark = pytest.mark.broker


def _counts(settings: Settings) -> dict[str, int]:
    admin = AdminClient(base_config(settings))
    return {spec.name: len(partition_ids(admin, topic_name(settings, spec))) for spec in PIPELINE.topics()}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)  # with the RAGBUS_* variables settings_factory set for this test
    return subprocess.run([sys.executable, "-m", "ragbus.cli", *args], capture_output=True, text=True, timeout=120,
                          env=env, cwd=ROOT)


def test_partitions_come_from_the_settings(broker: str, settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory(broker, RAGBUS_KAFKA_PARTITIONS="6",
                                RAGBUS_KAFKA_TOPIC_PARTITIONS='{"embedded.v1": 2, "dlq.embedder.v1": 3}')
    done = _cli("topics", "create")
    assert done.returncode == 0, done.stderr
    counts = _counts(settings)
    assert counts["documents.v1"] == counts["queries.v1"] == counts["answer-deltas.v1"] == 6
    assert counts["embedded.v1"] == 2 and counts["dlq.embedder.v1"] == 3 and counts["dlq.chunker.v1"] == 1
    assert f"{topic_name(settings, TOPICS.documents)}" in done.stdout and "6 partitions" in done.stdout
    verify_topics(settings, [TOPICS.documents, TOPICS.embedded])  # a worker with the same settings starts


def test_existing_topics_that_differ_are_one_line_that_says_what_to_do(
        broker: str, settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_factory(broker, RAGBUS_KAFKA_PARTITIONS="3")
    ensure_topics(settings)
    monkeypatch.setenv("RAGBUS_KAFKA_PARTITIONS", "5")
    changed = Settings()
    with pytest.raises(ConfigurationError, match="has 3 partitions, RAGBUS_KAFKA_PARTITIONS asks for 5"):
        ensure_topics(changed)
    for command in (("topics", "create"), ("worker", "indexer")):
        done = _cli(*command)
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        assert done.returncode == 2, done.stderr
        if command[0] == "topics":
            assert len(lines) == 1, done.stderr
        # a worker logs that it is starting first; its last line is the error, alone
        assert lines[-1].startswith("ragbus: error: ") and "has 3 partitions, RAGBUS_KAFKA_PARTITIONS asks for 5" \
            in lines[-1], done.stderr
        assert "recreate" in lines[-1] and "Traceback" not in done.stderr
    assert _counts(settings)["documents.v1"] == 3  # nothing was altered


def test_a_worker_without_its_topics_says_to_create_them(broker: str,
                                                         settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory(broker)
    with pytest.raises(ConfigurationError, match="does not exist: run `ragbus topics create`"):
        verify_topics(settings, [TOPICS.embedded])
    with pytest.raises(ConfigurationError, match="names 'nope.v1', which is no ragbus topic"):
        ensure_topics(settings_factory(broker, RAGBUS_KAFKA_TOPIC_PARTITIONS='{"nope.v1": 2}'))


def test_group_lag_is_read_from_kafka(broker: str, settings_factory: Callable[..., Settings]) -> None:
    """Records in multi-record batches (where ListOffsets(latest) is wrong on Tansu), some committed by the
    chunker's group: the lag per partition is exactly what is left, and `ragbus status` in another process,
    with no stage running on its machine, reports it."""
    settings = settings_factory(broker, RAGBUS_KAFKA_PARTITIONS="3")
    ensure_topics(settings)
    documents = topic_name(settings, TOPICS.documents)
    producer = Producer(base_config(settings) | {"linger.ms": 50})
    for i in range(120):
        producer.produce(documents, key=f"doc-{i % 11}".encode(), value=b"{}")
    assert producer.flush(30) == 0
    per_partition = Counter[int]()
    reader = make_consumer(settings, None)
    reader.assign([TopicPartition(documents, p, 0) for p in range(3)])
    while sum(per_partition.values()) < 120:
        for m in reader.consume(500, 1.0):
            assert m.error() is None
            per_partition[m.partition()] += 1
    reader.close()
    # the chunker's group has committed 5 records of partition 0 and all of partition 1, none of partition 2
    committer = make_consumer(settings, group_id(settings, "chunker"))
    committer.commit(offsets=[TopicPartition(documents, 0, 5), TopicPartition(documents, 1, per_partition[1])],
                     asynchronous=False)
    committer.close()

    lags = {g.stage: g for g in group_lags(settings)}
    chunker = {p.partition: p for p in lags["chunker"].partitions}
    assert chunker[0].lag == per_partition[0] - 5 and chunker[0].committed == 5
    assert chunker[1].lag == 0
    assert chunker[2].lag == per_partition[2] and chunker[2].committed is None
    assert lags["chunker"].lag == 120 - 5 - per_partition[1]
    assert lags["embedder"].lag == 0 and len(lags["embedder"].partitions) == 3

    done = _cli("status", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["stages"] == []  # no stage process on this machine: the lag comes from Kafka
    by_stage = {g["stage"]: g for g in report["groups"]}
    assert by_stage["chunker"]["lag"] == 120 - 5 - per_partition[1]
    assert by_stage["chunker"]["group"] == group_id(settings, "chunker")
    text = _cli("status").stdout
    assert f"chunker   {group_id(settings, 'chunker')}" in text and f"lag {120 - 5 - per_partition[1]}" in text
