"""The DocumentStore contract: every adapter (SQLite, MongoDB, ...) must pass all of it."""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from kernel.generations import Build, GenerationConflict, Progress, State, serving
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


# -- generations --------------------------------------------------------------------------------------

B1, B2, B3 = Build("model-a"), Build("model-b", chunk_size=120), Build("model-c", "q: ", "p: ")


def states(store: DocumentStore) -> dict[str, State]:
    return {g.name: g.state for g in store.generations()}


def test_ensure_first_records_g1_once(store: DocumentStore) -> None:
    assert store.generations() == []
    before = datetime.now(UTC) - timedelta(seconds=1)
    first = store.ensure_first(B1)
    assert [(g.name, g.build, g.state, g.queued) for g in first] == [("g1", B1, State.SERVING, 0)]
    assert before <= first[0].created_at <= datetime.now(UTC) + timedelta(seconds=1)  # aware UTC
    assert store.ensure_first(B2) == first == store.generations()  # idempotent: the recorded build stays


def test_ensure_first_from_concurrent_callers_converges(store: DocumentStore) -> None:
    results: list[object] = []
    threads = [threading.Thread(target=lambda b=b: results.append(store.ensure_first(b))) for b in (B1, B2, B3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    recorded = store.generations()
    assert len(recorded) == 1 and recorded[0].state is State.SERVING and all(r == recorded for r in results)


def test_a_dropped_first_generation_does_not_come_back(store: DocumentStore) -> None:
    store.ensure_first(B1)
    store.start_generation(B2, queued=5)
    store.switch("g2")
    store.drop_generation("g1")
    assert store.ensure_first(B1) == store.generations()
    assert states(store) == {"g2": State.SERVING}


def test_start_records_a_building_generation(store: DocumentStore) -> None:
    store.ensure_first(B1)
    started = store.start_generation(B2, queued=7)
    assert (started.name, started.build, started.state, started.queued) == ("g2", B2, State.BUILDING, 7)
    assert store.generations()[1] == started and started.created_at.tzinfo is not None
    store.set_queued("g2", 9)
    assert [g.queued for g in store.generations()] == [0, 9]
    assert serving(store.generations()).name == "g1"


def test_start_is_refused_while_one_builds_or_an_old_one_is_kept(store: DocumentStore) -> None:
    with pytest.raises(GenerationConflict, match="no generation is serving"):
        store.start_generation(B2, queued=0)
    store.ensure_first(B1)
    store.start_generation(B2, queued=0)
    with pytest.raises(GenerationConflict, match=r"g2 is building.*ragbus reindex switch.*ragbus reindex cancel"):
        store.start_generation(B3, queued=0)
    store.switch("g2")
    with pytest.raises(GenerationConflict, match=r"g1 is kept.*ragbus reindex drop-old.*ragbus reindex rollback"):
        store.start_generation(B3, queued=0)
    assert states(store) == {"g1": State.OLD, "g2": State.SERVING}  # nothing half-done
    store.drop_generation("g1")
    store.start_generation(B3, queued=0)
    assert states(store) == {"g2": State.SERVING, "g3": State.BUILDING}


def test_switch_and_rollback_swap_serving_and_old(store: DocumentStore) -> None:
    store.ensure_first(B1)
    with pytest.raises(GenerationConflict, match="no old generation is kept: nothing to roll back to"):
        store.rollback()
    store.start_generation(B2, queued=0)
    with pytest.raises(GenerationConflict, match="no old generation is kept"):
        store.rollback()  # a building one is not an old one
    store.switch("g2")
    assert states(store) == {"g1": State.OLD, "g2": State.SERVING}
    assert store.rollback() == "g1"
    assert states(store) == {"g1": State.SERVING, "g2": State.OLD}
    assert store.rollback() == "g2"
    assert states(store) == {"g1": State.OLD, "g2": State.SERVING}
    builds = {g.name: g.build for g in store.generations()}
    assert builds == {"g1": B1, "g2": B2}  # a change of state keeps each generation's settings


def test_switch_is_refused_for_a_generation_that_is_not_building(store: DocumentStore) -> None:
    store.ensure_first(B1)
    with pytest.raises(GenerationConflict, match="g1 is serving, not building"):
        store.switch("g1")
    with pytest.raises(GenerationConflict, match="no generation g2"):
        store.switch("g2")
    store.start_generation(B2, queued=0)
    store.switch("g2")
    with pytest.raises(GenerationConflict, match="g1 is old, not building"):
        store.switch("g1")
    assert states(store) == {"g1": State.OLD, "g2": State.SERVING}


def test_drop_forgets_a_building_or_old_generation_never_the_serving_one(store: DocumentStore) -> None:
    store.ensure_first(B1)
    with pytest.raises(GenerationConflict, match="g1 is serving and cannot be dropped"):
        store.drop_generation("g1")
    with pytest.raises(GenerationConflict, match="no generation g2"):
        store.drop_generation("g2")
    store.start_generation(B2, queued=0)
    store.drop_generation("g2")  # a cancelled build
    assert states(store) == {"g1": State.SERVING}
    store.start_generation(B3, queued=0)
    store.switch("g3")
    with pytest.raises(GenerationConflict, match="g3 is serving"):
        store.drop_generation("g3")
    store.drop_generation("g1")  # the old one
    assert states(store) == {"g3": State.SERVING}


def test_drop_deletes_that_generations_chunk_and_progress_rows_only(store: DocumentStore) -> None:
    store.ensure_first(B1)
    store.start_generation(B2, queued=1)
    store.upsert_chunks([gchunk(1, 0, "g1"), gchunk(1, 0, "g1", "e")])
    store.upsert_chunks([gchunk(1, 0, "g2"), gchunk(1, 0, "g2", "e")], generation="g2")
    for g in ("g1", "g2"):
        store.mark_indexed(g, "t", "d", 1)
    store.drop_generation("g2")
    assert store.chunk_versions("t", "d", "g2") == [] and store.count_chunks(generation="g2") == 0
    assert store.indexed_version("g2", "t", "d") is None
    assert store.chunk_versions("t", "d") == [(gchunk(1, 0, "g1").chunk_id, 1)] and store.count_chunks() == 2
    assert store.indexed_version("g1", "t", "d") == 1
    store.start_generation(B3, queued=1)  # a new build starts from nothing
    assert store.progress("g3") == Progress(0, 0)


def test_mark_indexed_keeps_the_highest_version(store: DocumentStore) -> None:
    store.ensure_first(B1)
    assert store.indexed_version("g1", "t", "d") is None
    store.mark_indexed("g1", "t", "d", 3)
    store.mark_indexed("g1", "t", "d", 2)  # a late redelivery of an older version
    assert store.indexed_version("g1", "t", "d") == 3
    store.mark_indexed("g1", "t", "d", 4)
    assert store.indexed_version("g1", "t", "d") == 4
    assert store.indexed_version("g1", "u", "d") is None and store.indexed_version("g2", "t", "d") is None


def test_mark_indexed_of_a_generation_not_recorded_is_ignored(store: DocumentStore) -> None:
    """A stage that marks after a drop (it read the generations before) must not leave progress behind."""
    store.ensure_first(B1)
    store.mark_indexed("g2", "t", "d", 1)
    assert store.indexed_version("g2", "t", "d") is None


def test_progress_and_behind_compare_with_each_documents_current_version(store: DocumentStore) -> None:
    store.ensure_first(B1)
    store.start_generation(B2, queued=5)
    for document_id in ("a", "b", "c", "d"):
        store.apply_status(doc(1, Status.INDEXED, document_id=document_id))
    store.apply_status(doc(1, Status.INDEXED, document_id="a", tenant="u"))
    store.apply_status(doc(1, Status.INDEXED, document_id="gone"))
    store.apply_status(doc(1, Status.DELETED, document_id="gone"))  # deleted: not counted
    store.apply_status(doc(1, Status.CHUNKED, document_id="new"))  # not indexed yet: not counted
    store.mark_indexed("g2", "t", "a", 1)
    store.mark_indexed("g2", "t", "b", 1)
    store.apply_status(doc(2, Status.INDEXED, document_id="b"))  # now current at a newer version than marked
    store.mark_indexed("g2", "t", "c", 2)  # newer than the row (the rebuild ran ahead of the status): done
    store.mark_indexed("g2", "t", "gone", 1)
    assert store.progress("g2") == Progress(done=2, total=5)
    assert not store.progress("g2").caught_up
    assert store.behind("g2", limit=10) == [("t", "b"), ("t", "d"), ("u", "a")]
    assert store.behind("g2", limit=2) == [("t", "b"), ("t", "d")]
    assert store.behind("g2", limit=10, after=("t", "d")) == [("u", "a")]
    assert store.behind("g2", limit=10, after=("u", "a")) == []
    assert store.progress("g1") == Progress(0, 5) and len(store.behind("g1", limit=10)) == 5
    for tenant, document_id, version in [("t", "b", 2), ("t", "d", 1), ("u", "a", 1)]:
        store.mark_indexed("g2", tenant, document_id, version)
    assert store.progress("g2") == Progress(5, 5) and store.progress("g2").caught_up
    assert store.behind("g2", limit=10) == []


def test_behind_pages_past_a_long_run_of_documents_done(store: DocumentStore,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The documents a generation lacks may lie after many it has (more than an adapter reads at once: the
    MongoDB adapter's batch made small here): a page still finds them."""
    import infra.stores.mongo

    monkeypatch.setattr(infra.stores.mongo, "BEHIND_BATCH", 4)
    store.ensure_first(B1)
    store.start_generation(B2, queued=0)
    for i in range(23):
        store.apply_status(doc(1, Status.INDEXED, document_id=f"d{i:02d}"))
        if i not in (1, 15, 22):
            store.mark_indexed("g2", "t", f"d{i:02d}", 1)
    assert store.behind("g2", limit=2) == [("t", "d01"), ("t", "d15")]
    assert store.behind("g2", limit=2, after=("t", "d15")) == [("t", "d22")]
    assert store.progress("g2") == Progress(20, 23)


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
        store.ensure_first(B1)
        store.start_generation(B2, queued=1)
        store.mark_indexed("g2", "t", "d", 3)
    finally:
        store.close()
    again = SqliteDocumentStore(path)  # opening a migrated file changes nothing
    try:
        got = again.get_document("t", "d")
        assert got is not None and got.content_type == "text/markdown"
        assert again.chunk_versions("t", "d", "g2") == [(gchunk(3, 0, "g2").chunk_id, 3)]
        assert again.indexed_version("g2", "t", "d") == 3
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
    store.ensure_first(B1)
    store.start_generation(B2, queued=1)
    store.switch("g2")
    store.drop_generation("g1")
    assert store.chunk_versions("t", "d") == [] and store.count_chunks() == 1
