"""Metrics an SRE expects: a process exports the families of its stages only, buckets cover real durations,
build info, freshness of documents and answers; docs/operations.md names every family."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from consumers.answerer import Answerer
from infra.ops.metrics import DURATION_BUCKETS, Metrics, families
from infra.stores.lance import LanceVectorIndex
from infra.stores.sqlite import SqliteAnswerCache, SqliteDocumentStore
from retrieval.extractive import ExtractiveAnswerer
from retrieval.retriever import RetrievalConfig, Retriever
from schemas.events import DocumentArrived, QueryRequested, utcnow
from schemas.stages import PIPELINE
from tests.conftest import ROOT
from tests.doubles import HashEmbedder
from tests.unit.test_stages import Pipeline

STAGE_ONLY = {"ragbus_embed_seconds": "embedder", "ragbus_embedding_cache_total": "embedder",
              "ragbus_llm_cost_usd_total": "answerer", "ragbus_llm_tokens_total": "answerer",
              "ragbus_answers_total": "answerer", "ragbus_chunks_total": "indexer"}


def scraped(metrics: Metrics) -> set[str]:
    text = generate_latest(metrics.registry).decode()
    return set(re.findall(r"^# TYPE (ragbus_\w+) ", text, re.M))


@pytest.mark.parametrize("stage", PIPELINE.names())
def test_a_process_exports_the_families_of_its_stages_only(stage: str) -> None:
    metrics = Metrics(stages=[stage])
    exported = set(metrics.exported())
    assert scraped(metrics) == exported
    for family, owner in STAGE_ONLY.items():
        assert (family in exported) == (owner == stage), family
    assert "ragbus_build_info" in exported and "ragbus_consumer_lag" in exported


def test_the_embedder_does_not_export_llm_cost_but_the_answerer_does() -> None:
    assert "ragbus_llm_cost_usd_total" not in Metrics(stages=["embedder"]).exported()
    assert "ragbus_llm_cost_usd_total" in Metrics(stages=["answerer"]).exported()
    both = Metrics(stages=["indexer", "status"]).exported()
    assert "ragbus_freshness_seconds" in both and "ragbus_answers_total" not in both


def test_buckets_cover_a_slow_embedding_batch() -> None:
    metrics = Metrics(stages=["embedder"])
    metrics.batch_seconds.labels("embedder").observe(58.0)  # a 64-event batch on a busy 2-core machine
    text = generate_latest(metrics.registry).decode()
    assert 'ragbus_batch_seconds_bucket{le="60.0",stage="embedder"} 1.0' in text
    assert max(DURATION_BUCKETS) >= 300


def test_build_info_names_version_revision_and_python() -> None:
    metrics = Metrics(stages=["status"], revision="abc1234")
    text = generate_latest(metrics.registry).decode()
    assert re.search(r'ragbus_build_info\{python="3\.\d+\.\d+",revision="abc1234",version="[^"]+"\} 1\.0', text)
    assert "process_resident_memory_bytes" in text


def test_document_freshness_is_measured_once_per_version_when_searchable(tmp_path: Path) -> None:
    pipe = Pipeline(tmp_path)
    doc = DocumentArrived(document_id="d1", version=1, text="Kafka keeps order per partition. " * 40,
                          occurred_at=utcnow() - timedelta(seconds=42))
    embedded = pipe.embedded(doc)
    assert all(e.document_occurred_at == doc.occurred_at for e in embedded)  # type: ignore[union-attr]
    pipe.index_events(embedded)
    pipe.index_events(embedded)  # a redelivery does not count twice
    registry = pipe.indexer._metrics.registry
    assert registry.get_sample_value("ragbus_freshness_seconds_count", {"kind": "document"}) == 1
    age = registry.get_sample_value("ragbus_freshness_seconds_sum", {"kind": "document"})
    assert age is not None and 42 <= age < 60


def test_query_freshness_counts_answers_made_now_not_replays(tmp_path: Path) -> None:
    store, embedder = SqliteDocumentStore(tmp_path / "db.sqlite"), HashEmbedder()
    metrics = Metrics(stages=["answerer"])
    retriever = Retriever(embedder, LanceVectorIndex(tmp_path / "lance", embedder.dim), RetrievalConfig(candidates=10))
    answerer = Answerer(retriever, ExtractiveAnswerer(), store, metrics, lambda out: None,
                        cache=SqliteAnswerCache(tmp_path / "db.sqlite"))
    q = QueryRequested(text="where?", query_id="q1", occurred_at=utcnow() - timedelta(seconds=3))
    answerer.handle([q])
    answerer.handle([q])  # redelivered: the stored answer is republished
    assert metrics.registry.get_sample_value("ragbus_freshness_seconds_count", {"kind": "query"}) == 1
    assert 3 <= (metrics.registry.get_sample_value("ragbus_freshness_seconds_sum", {"kind": "query"}) or 0) < 10


def test_operations_doc_names_every_family() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    documented = set(re.findall(r"^\| `(ragbus_\w+)`", doc, re.M))
    assert documented == set(families()), set(families()) ^ documented
