"""The end-to-end path on real Kafka (KRaft), Weaviate and MongoDB containers: the same commands as on
the embedded defaults, switched by configuration only. Skips with the reason without a Docker engine."""

from __future__ import annotations

import pytest

from engine.clients import EventProducer
from engine.tail import Tail
from infra.models.embedder import embedding_dim
from infra.settings import Settings
from ragbus import wiring
from ragbus.client import ask_many, documents_from, new_correlation, publish, wait_final
from ragbus.supervisor import Stack
from schemas.events import QueryRequested, Status
from schemas.topics import TOPICS
from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def test_pipeline_on_kafka_weaviate_and_mongodb(kafka_bootstrap: str, weaviate_container: tuple[str, int],
                                                mongodb_uri: str, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    url, grpc_port = weaviate_container
    for key, value in {"RAGBUS_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "RAGBUS_WEAVIATE_URL": url,
                       "RAGBUS_WEAVIATE_GRPC_PORT": str(grpc_port), "RAGBUS_MONGODB_URI": mongodb_uri,
                       "RAGBUS_DATA_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(key, value)
    with Stack(Settings()) as stack:
        settings = stack.child_settings()
        events = list(documents_from(sorted((ROOT / "docs").glob("*.md")), settings, wiring.build_store(settings),
                                     "default", new_correlation()))
        with Tail(settings, TOPICS.status) as tail:
            publish(settings, EventProducer(settings), events)
            final = wait_final(tail, events, 600)
        assert {s.status for s in final.values()} == {Status.INDEXED} and len(final) == len(events)
        q = QueryRequested(text="What happens to late chunks of a deleted document version?")
        answer = ask_many(settings, [q], 120)[q.query_id]
        assert answer.citations[0].document_id.endswith("delivery.md")
        index = wiring.build_index(settings, embedding_dim(settings.embedder.model))
        assert index.count("default") == wiring.build_store(settings).count_chunks("default") > 0
