"""The DocumentStore contract: every adapter (SQLite, MongoDB, ...) must pass all of it."""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from kernel.ports import ChunkRecord, DocumentRecord, DocumentStore
from schemas.events import Status, chunk_uuid


def doc(version: int, status: Status, document_id: str = "d", tenant: str = "t", **kw: object) -> DocumentRecord:
    return DocumentRecord(tenant, document_id, version, status, **kw)  # type: ignore[arg-type]


def test_status_moves_forward_only(store: DocumentStore) -> None:
    assert store.apply_status(doc(1, Status.CHUNKED))
    assert store.apply_status(doc(1, Status.INDEXED, chunks=3, content_hash="h", title="T", metadata={"lang": "en"}))
    assert not store.apply_status(doc(1, Status.CHUNKED))  # stale event
    assert not store.apply_status(doc(1, Status.INDEXED, chunks=3))  # redelivery changes nothing
    got = store.get_document("t", "d")
    assert got is not None and (got.status, got.chunks, got.content_hash, got.title) == (Status.INDEXED, 3, "h", "T")
    assert got.metadata == {"lang": "en"}
    assert store.apply_status(doc(1, Status.DELETED))  # a later status of the same version keeps the description
    got = store.get_document("t", "d")
    assert got is not None and got.title == "T" and got.metadata == {"lang": "en"}


def test_newer_version_wins_and_older_is_ignored(store: DocumentStore) -> None:
    assert store.apply_status(doc(5, Status.INDEXED))
    assert store.apply_status(doc(7, Status.CHUNKED))
    assert not store.apply_status(doc(6, Status.INDEXED))
    got = store.get_document("t", "d")
    assert got is not None and (got.version, got.status) == (7, Status.CHUNKED)


def test_a_delete_is_a_tombstone(store: DocumentStore) -> None:
    assert store.apply_status(doc(3, Status.INDEXED))
    assert store.apply_status(doc(3, Status.DELETED))
    assert not store.apply_status(doc(3, Status.INDEXED))
    assert not store.apply_status(doc(2, Status.CHUNKED))
    assert store.apply_status(doc(4, Status.CHUNKED))  # re-created later at a newer version


def test_failed_keeps_the_error(store: DocumentStore) -> None:
    assert store.apply_status(doc(1, Status.FAILED, error="empty document"))
    got = store.get_document("t", "d")
    assert got is not None and got.error == "empty document"


def chunk(version: int, idx: int, document_id: str = "d", tenant: str = "t") -> ChunkRecord:
    return ChunkRecord(chunk_uuid(tenant, document_id, version, idx), tenant, document_id, version, idx, f"text {idx}",
                       np.zeros(4, dtype=np.float32), "T", ("A", "B"), "src", {"k": 1})


def test_chunks_upsert_idempotently_and_delete_by_version(store: DocumentStore) -> None:
    store.upsert_chunks([chunk(1, 0), chunk(1, 1), chunk(2, 0)])
    store.upsert_chunks([chunk(1, 0)])
    assert store.count_chunks("t") == 3
    store.delete_chunk_versions("t", "d", below=2)
    assert store.chunk_versions("t", "d") == [(chunk_uuid("t", "d", 2, 0), 2)]


def test_claim_check_roundtrip(store: DocumentStore) -> None:
    ref = store.put_content(b"big body")
    assert store.put_content(b"big body") == ref
    assert store.get_content(ref) == b"big body"
    with pytest.raises(KeyError):
        store.get_content(ref.model_copy(update={"sha256": "0" * 64}))


def test_answer_log_keeps_the_first_answer(store: DocumentStore) -> None:
    assert store.get_answer("t", "q") is None
    store.put_answer("t", "q", '{"a": 1}')
    store.put_answer("t", "q", '{"a": 2}')
    assert store.get_answer("t", "q") == '{"a": 1}'
    assert store.get_answer("other", "q") is None


def test_counts_and_listing_by_tenant(store: DocumentStore) -> None:
    store.apply_status(doc(1, Status.INDEXED, document_id="a"))
    store.apply_status(doc(1, Status.FAILED, document_id="b"))
    store.apply_status(doc(1, Status.INDEXED, document_id="c", tenant="u"))
    assert store.status_counts("t") == {"indexed": 1, "failed": 1}
    assert store.status_counts() == {"indexed": 2, "failed": 1}
    assert [d.document_id for d in store.list_documents("u")] == ["c"]


def test_a_failed_version_can_still_be_indexed_but_not_the_reverse(store: DocumentStore) -> None:
    assert store.apply_status(doc(1, Status.FAILED, error="content missing"))
    assert store.apply_status(doc(1, Status.INDEXED, chunks=2))  # replayed after the fix
    assert not store.apply_status(doc(1, Status.FAILED, error="late report"))
    got = store.get_document("t", "d")
    assert got is not None and got.status is Status.INDEXED and got.error == ""


# -- content type -----------------------------------------------------------------------------------

def test_content_type_is_kept_and_a_status_without_content_keeps_it(store: DocumentStore) -> None:
    assert store.apply_status(doc(1, Status.CHUNKED, content_hash="h1", content_type="text/markdown"))
    got = store.get_document("t", "d")
    assert got is not None and got.content_type == "text/markdown"
    assert store.apply_status(doc(1, Status.INDEXED, chunks=2))  # no content: the type of the content kept stays
    assert store.apply_status(doc(1, Status.DELETED))
    got = store.get_document("t", "d")
    assert got is not None and (got.status, got.content_type) == (Status.DELETED, "text/markdown")
    assert store.apply_status(doc(2, Status.CHUNKED, content_hash="h2"))  # a new version brings its own type
    got = store.get_document("t", "d")
    assert got is not None and got.content_type == "text/plain"
    assert store.apply_status(doc(3, Status.CHUNKED, content_hash="h3", content_type="application/pdf"))
    assert [d.content_type for d in store.list_documents("t")] == ["application/pdf"]


# -- documents a rebuild reads --------------------------------------------------------------------------

def test_indexed_documents_page_in_key_order(store: DocumentStore) -> None:
    for tenant, document_id in [("u", "a"), ("t", "c"), ("t", "a"), ("t", "b"), ("v", "a")]:
        store.apply_status(doc(2, Status.INDEXED, document_id=document_id, tenant=tenant, content_hash="h",
                               content_type="text/html"))
    store.apply_status(doc(1, Status.CHUNKED, document_id="x"))  # not indexed (yet)
    store.apply_status(doc(1, Status.INDEXED, document_id="b", tenant="u"))
    store.apply_status(doc(1, Status.DELETED, document_id="b", tenant="u"))  # deleted
    first = store.indexed_documents(limit=2)
    assert [(d.tenant, d.document_id) for d in first] == [("t", "a"), ("t", "b")]
    assert (first[0].version, first[0].content_hash, first[0].content_type) == (2, "h", "text/html")
    rest = store.indexed_documents(after=("t", "b"), limit=10)
    assert [(d.tenant, d.document_id) for d in rest] == [("t", "c"), ("u", "a"), ("v", "a")]
    assert [d.document_id for d in store.indexed_documents(after=("t", "zz"))] == ["a", "a"]  # next tenant on
    assert store.indexed_documents(after=("v", "a")) == []


# -- chunk rows per generation ------------------------------------------------------------------------

def gchunk(version: int, idx: int, generation: str, document_id: str = "d") -> ChunkRecord:
    """A chunk as a generation's stages make it: its id differs per generation."""
    return dataclasses.replace(chunk(version, idx, document_id), chunk_id=chunk_uuid("t", document_id, version, idx)
                               if generation == "g1" else chunk_uuid("t", f"{generation}/{document_id}", version, idx))


def test_chunk_rows_are_kept_per_generation(store: DocumentStore) -> None:
    store.upsert_chunks([gchunk(1, 0, "g1"), gchunk(1, 1, "g1")])  # the first generation is the default
    store.upsert_chunks([gchunk(1, 0, "g2"), gchunk(2, 0, "g2")], generation="g2")
    assert store.chunk_versions("t", "d") == [(gchunk(1, 0, "g1").chunk_id, 1), (gchunk(1, 1, "g1").chunk_id, 1)]
    assert store.chunk_versions("t", "d", "g1") == store.chunk_versions("t", "d")
    assert store.chunk_versions("t", "d", "g2") == [(gchunk(1, 0, "g2").chunk_id, 1), (gchunk(2, 0, "g2").chunk_id, 2)]
    assert store.chunk_versions("t", "d", "g3") == []
    assert store.count_chunks() == 4 and store.count_chunks("t") == 4
    assert store.count_chunks("t", generation="g2") == 2 and store.count_chunks(generation="g1") == 2  # type: ignore[call-arg]
    store.delete_chunk_versions("t", "d", below=2)  # in every generation
    assert store.chunk_versions("t", "d") == []
    assert store.chunk_versions("t", "d", "g2") == [(gchunk(2, 0, "g2").chunk_id, 2)]


# -- SQLite: a file from before generations ---------------------------------------------------------

OLD_SCHEMA = """
CREATE TABLE documents (
  tenant TEXT NOT NULL, document_id TEXT NOT NULL, version INTEGER NOT NULL, status TEXT NOT NULL,
  status_rank INTEGER NOT NULL, chunks INTEGER NOT NULL DEFAULT 0, error TEXT NOT NULL DEFAULT '',
  content_hash TEXT NOT NULL DEFAULT '', title TEXT NOT NULL DEFAULT '', source TEXT NOT NULL DEFAULT '',
  metadata TEXT NOT NULL DEFAULT '{}', updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
  PRIMARY KEY (tenant, document_id));
CREATE INDEX documents_status ON documents (tenant, status);
CREATE TABLE chunk_ids (
  chunk_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, document_id TEXT NOT NULL, version INTEGER NOT NULL,
  idx INTEGER NOT NULL);
CREATE INDEX chunk_ids_doc ON chunk_ids (tenant, document_id, version);
INSERT INTO documents (tenant, document_id, version, status, status_rank, content_hash, title)
  VALUES ('t', 'd', 2, 'indexed', 4, 'h', 'Old');
INSERT INTO chunk_ids VALUES ('c0', 't', 'd', 2, 0);
"""


def test_sqlite_migrates_a_file_created_before_generations(tmp_path: Path) -> None:
    from infra.stores.sqlite import SqliteDocumentStore

    path = tmp_path / "old.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.executescript(OLD_SCHEMA)
    store = SqliteDocumentStore(path)
    try:
        got = store.get_document("t", "d")
        assert got is not None and (got.version, got.title, got.content_type) == (2, "Old", "text/plain")
        assert store.chunk_versions("t", "d") == [("c0", 2)]  # rows from before are the first generation's
        assert store.apply_status(doc(3, Status.CHUNKED, content_hash="h3", content_type="text/markdown"))
        store.upsert_chunks([gchunk(3, 0, "g2")], generation="g2")
    finally:
        store.close()
    again = SqliteDocumentStore(path)  # opening a migrated file changes nothing
    try:
        got = again.get_document("t", "d")
        assert got is not None and got.content_type == "text/markdown"
        assert again.chunk_versions("t", "d", "g2") == [(gchunk(3, 0, "g2").chunk_id, 3)]
    finally:
        again.close()


# -- MongoDB: chunk rows from before generations ----------------------------------------------------

@pytest.mark.parametrize("backend", ["mongomock", "nx-27017"])
def test_mongo_chunk_rows_without_a_generation_are_the_firsts(backend: str, request: pytest.FixtureRequest) -> None:
    from infra.stores.mongo import MongoDocumentStore

    from .conftest import mongo_database

    client, database = mongo_database(backend, request)
    store = MongoDocumentStore(client, database)  # type: ignore[arg-type]
    client[database]["chunk_ids"].insert_one(  # type: ignore[index]
        {"_id": "c0", "tenant": "t", "document_id": "d", "version": 1, "idx": 0})
    store.upsert_chunks([gchunk(1, 0, "g2")], generation="g2")
    assert store.chunk_versions("t", "d") == [("c0", 1)]
    assert store.count_chunks(generation="g1") == 1 and store.count_chunks() == 2
    store.delete_chunk_versions("t", "d", below=2)
    assert store.chunk_versions("t", "d") == [] and store.count_chunks() == 0
