"""The DocumentStore contract: every adapter (SQLite, MongoDB, ...) must pass all of it."""

from __future__ import annotations

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
