"""The whole pipeline as `ragbus up` runs it: stage processes on the local broker, real model, real files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.clients import EventProducer
from engine.tail import Tail
from infra.models.embedder import embedding_dim
from infra.settings import Settings
from ragbus import wiring
from ragbus.client import ask_many, documents_from, new_correlation, publish, wait_final
from ragbus.supervisor import Stack
from schemas.events import DocumentDeleted, QueryRequested, Status
from schemas.topics import TOPICS, document_key
from tests.conftest import ROOT

from .helpers import wait_until

pytestmark = pytest.mark.broker


def ingest(settings: Settings, paths: list[Path], timeout: float = 240) -> dict[str, Status]:
    events = list(documents_from(paths, settings, wiring.build_store(settings), "default", new_correlation()))
    with Tail(settings, TOPICS.status) as tail:
        publish(settings, EventProducer(settings), events)
        final = wait_final(tail, events, timeout)
    return {k: v.status for k, v in final.items()}


def ask(settings: Settings, text: str, **kw: object) -> object:
    q = QueryRequested(text=text, **kw)  # type: ignore[arg-type]
    return ask_many(settings, [q], 60)[q.query_id]


def test_ingested_docs_answer_with_the_right_citation(stack: tuple[Stack, Settings]) -> None:
    _, settings = stack
    docs = sorted((ROOT / "docs").glob("*.md"))
    statuses = ingest(settings, docs)
    assert set(statuses.values()) == {Status.INDEXED} and len(statuses) == len(docs)
    cases = {  # the documents that answer each question (operations.md has a section on SASL settings too)
        "Where do I put extra librdkafka settings such as SASL?": ("configuration.md", "operations.md"),
        "What happens to late chunks of a deleted document version?": ("delivery.md",),
        "How long does Tansu hold a consumer group join?": ("operations.md",),
        "How are dense and keyword candidates fused into a ranking of sections?": ("architecture.md",),
    }
    for question, expected in cases.items():
        answer = ask(settings, question)
        assert answer.citations, question  # type: ignore[attr-defined]
        assert answer.citations[0].document_id.endswith(expected), (question, answer.citations[0])  # type: ignore[attr-defined]
        assert answer.degraded and answer.answer  # type: ignore[attr-defined]


def test_update_replaces_and_delete_removes_everywhere(stack: tuple[Stack, Settings], tmp_path: Path) -> None:
    _, settings = stack
    note = tmp_path / "zebra.md"
    note.write_text("# Zebras\n\nZebras sleep standing up in the savanna.\n")
    assert set(ingest(settings, [note]).values()) == {Status.INDEXED}
    doc_id = next(iter(documents_from([note], settings, None, "default", "x"))).document_id
    store = wiring.build_store(settings)
    index = wiring.build_index(settings, embedding_dim(settings.embedder.model))
    first = {v for _, v in store.chunk_versions("default", doc_id)}

    note.write_text("# Zebras\n\nZebras eat grass and migrate with wildebeest.\n")
    assert set(ingest(settings, [note]).values()) == {Status.INDEXED}
    versions = ({v for _, v in store.chunk_versions("default", doc_id)},
                {v for _, v in index.chunk_versions("default", doc_id)})
    assert versions[0] == versions[1] and len(versions[0]) == 1 and versions[0] != first
    hit = ask(settings, "What do zebras eat?", retrieve_only=True)
    assert "grass" in hit.citations[0].text  # type: ignore[attr-defined]

    producer = EventProducer(settings)
    producer.send(TOPICS.documents, document_key("default", doc_id), DocumentDeleted(document_id=doc_id))
    producer.flush()
    wait_until(lambda: not store.chunk_versions("default", doc_id) and not index.chunk_versions("default", doc_id),
               60, "the deleted document's chunks to go")
    assert store.get_document("default", doc_id).status is Status.DELETED  # type: ignore[union-attr]


def test_bad_documents_fail_with_a_reason_and_good_ones_still_index(stack: tuple[Stack, Settings],
                                                                    tmp_path: Path) -> None:
    _, settings = stack
    (tmp_path / "empty.md").write_text("   \n")
    (tmp_path / "fine.txt").write_text("Ostriches cannot fly but run very fast.")
    shutil.copy(ROOT / "README.md", tmp_path / "readme.md")
    statuses = ingest(settings, [tmp_path / "empty.md", tmp_path / "fine.txt", tmp_path / "readme.md"])
    by_name = {Path(k).name: v for k, v in statuses.items()}
    assert by_name == {"empty.md": Status.FAILED, "fine.txt": Status.INDEXED, "readme.md": Status.INDEXED}
