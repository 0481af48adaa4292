"""Hostile values published straight onto every stage's input topic, between good events, through the real
runtimes (faust agents and confluent-kafka consumers as `ragbus up` runs them, on the local broker).

The property, for every generated mix: each good event takes effect exactly once, each hostile value is
in the consuming stage's dead-letter topic with a reason, no stage process died or restarted, and no
traceback reached a stage's log.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.clients import EventProducer, make_consumer, partition_ids, topic_name
from engine.serde import encode
from engine.tail import Tail
from infra.models.embedder import embedding_dim
from infra.settings import Settings
from ragbus import wiring
from ragbus.supervisor import Stack
from schemas.events import (
    Chunk,
    ChunksEmbedded,
    ChunksProduced,
    DocumentArrived,
    EmbeddedChunk,
    QueryRequested,
    Status,
    content_hash,
)
from schemas.stages import PIPELINE, STATUS
from schemas.topics import TOPICS, TopicSpec, document_key
from tests import hostile

from .helpers import wait_until

pytestmark = pytest.mark.broker
TENANT = "hostile"
#: Which stage reads each input topic (and so dead-letters what it cannot read): every stage's input but the
#: stages' own status reports.
READER = {stage.reads.name: stage.name for stage in PIPELINE if stage is not STATUS}
INPUTS = [stage.reads for stage in PIPELINE if stage is not STATUS]


class DeadLetters:
    """Follows one dead-letter topic from (about) its end and keeps each record's reason by key."""

    def __init__(self, settings: Settings, stage: str) -> None:
        from confluent_kafka import TopicPartition

        spec = PIPELINE[stage].dead_letters
        self._consumer = make_consumer(settings, None)
        name = topic_name(settings, spec)
        parts = []
        for p in partition_ids(self._consumer, name):
            _, high = self._consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)
            parts.append(TopicPartition(name, p, max(0, high - 1)))
        self._consumer.assign(parts)
        self.reasons: dict[bytes, str] = {}

    def poll(self) -> dict[bytes, str]:
        for msg in self._consumer.consume(500, 0.3):
            if msg.error() is None:
                headers = {k: (v or b"").decode("utf-8", "replace") for k, v in msg.headers() or []}
                self.reasons[msg.key() or b""] = headers.get("ragbus-dlq-reason", "")
        return self.reasons

    def close(self) -> None:
        self._consumer.close()


@pytest.fixture(scope="module")
def running(stack: tuple[Stack, Settings]) -> Iterator[tuple[Stack, Settings, dict[str, int]]]:
    s, settings = stack
    pids = s.pids()
    yield s, settings, pids
    assert s.pids() == pids, "a stage process died or was restarted during the hostile-input runs"


def good_events(spec: TopicSpec, dim: int, tag: str) -> list[Any]:
    uid = f"{tag}-{uuid.uuid4().hex[:8]}"
    vector = EmbeddedChunk.encode_vector(np.full(dim, 1 / np.sqrt(dim), dtype=np.float32))
    text = f"Good event {uid}: lighthouses guide ships along the coast at night."
    part = {"tenant": TENANT, "version": 1, "content_hash": content_hash(text.encode()), "part": 0, "parts": 1,
            "total_chunks": 1, "title": "Lighthouses"}
    make = {
        "documents.v1": lambda i: DocumentArrived(tenant=TENANT, document_id=f"d-{uid}-{i}", title="Lighthouses",
                                                  text=text),
        "chunks.v1": lambda i: ChunksProduced(**part, document_id=f"c-{uid}-{i}",
                                              chunks=[Chunk(index=0, text=text, section_path=["Coast"])]),
        "embedded.v1": lambda i: ChunksEmbedded(**part, document_id=f"e-{uid}-{i}", model="test", dim=dim,
                                                chunks=[EmbeddedChunk(index=0, text=text, vector_b64=vector)]),
        "queries.v1": lambda i: QueryRequested(tenant=TENANT, query_id=f"q-{uid}-{i}", text="lighthouses",
                                               retrieve_only=True, top_k=1),
    }[spec.name]
    return [make(i) for i in range(3)]


def key_of(event: Any) -> bytes:
    if isinstance(event, QueryRequested):
        return event.query_id.encode()
    return document_key(event.tenant, event.document_id)


def took_effect_once(settings: Settings, event: Any, answers: dict[str, set[str]]) -> bool:
    if isinstance(event, QueryRequested):
        return len(answers.get(event.query_id, set())) == 1
    store = wiring.build_store(settings)
    doc = store.get_document(event.tenant, event.document_id)
    if doc is None or doc.status is not Status.INDEXED:
        return False
    chunks = store.chunk_versions(event.tenant, event.document_id)
    index = wiring.build_index(settings, embedding_dim(settings.embedder.model))
    in_index = index.chunk_versions(event.tenant, event.document_id)
    return len(chunks) == doc.chunks == len({c for c, _ in chunks}) and sorted(chunks) == sorted(in_index)


@pytest.mark.parametrize("spec", INPUTS, ids=lambda s: s.name)
@settings(max_examples=4, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(data=st.data())
def test_hostile_values_are_dead_lettered_and_good_events_take_effect_once(
        running: tuple[Stack, Settings, dict[str, int]], spec: TopicSpec, data: st.DataObject) -> None:
    stack, settings, _ = running
    bad = data.draw(st.lists(hostile.values(spec, hostile.GOOD[spec.name]), min_size=1, max_size=4), "hostile")
    good = good_events(spec, embedding_dim(settings.embedder.model), spec.name.split(".")[0])
    mix: list[tuple[bytes, bytes]] = [(f"hostile-{uuid.uuid4().hex}".encode(), v) for v in bad]
    mix += [(key_of(ev), encode(ev)) for ev in good]
    order = data.draw(st.permutations(range(len(mix))), "order")

    dead = DeadLetters(settings, READER[spec.name])
    answers: dict[str, set[str]] = {}
    producer = EventProducer(settings)
    try:
        with Tail(settings, TOPICS.answers) as tail:
            for i in order:
                producer.send_raw(topic_name(settings, spec), mix[i][0], mix[i][1])
            producer.flush()

            def settled() -> bool:
                for a in tail.poll(0.2):
                    answers.setdefault(a.query_id, set()).add(str(a.event_id))
                reasons = dead.poll()
                return (all(k in reasons for k, _ in mix[:len(bad)])
                        and all(took_effect_once(settings, ev, answers) for ev in good))

            wait_until(settled, 90, f"hostile values dead-lettered and good events in effect on {spec.name}")
        for key, _ in mix[:len(bad)]:
            assert dead.reasons[key].strip(), f"a dead letter without a reason: {key!r}"
        assert not any(k in dead.reasons for k in (key_of(ev) for ev in good)), "a good event was dead-lettered"
    finally:
        dead.close()
    logs = sorted((settings.data_dir / "logs").glob("*.log"))
    for log in logs:
        assert "Traceback" not in log.read_text(errors="replace"), f"a traceback in {log.name}"
    assert stack.pids() == running[2], "a stage process died or was restarted"


def test_the_embedder_yields_the_cores_to_interactive_stages(running: tuple[Stack, Settings, dict[str, int]]) -> None:
    """Batch embedding runs at a lower CPU priority (RAGBUS_EMBEDDER_NICE) than the answerer, so a bulk ingest
    on a small machine does not take the cores from interactive queries."""
    _, settings, pids = running

    def nice(pid: int) -> int:  # field 19 of /proc/PID/stat (after the command name in parentheses)
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])

    assert nice(pids["embedder"]) == settings.embedder.nice == 10
    assert nice(pids["answerer"]) == nice(os.getpid())
