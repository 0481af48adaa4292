"""The AnswerCache contract: every backend (SQLite, MongoDB through mongomock and through nx-27017, a MongoDB
wire-protocol server that pymongo talks to over a socket) passes it, and keeps the cache apart from the answer
log, whose keys are the clients' own query ids."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kernel.ports import AnswerCache, DocumentStore

from .conftest import mongo_database

BACKENDS = ["sqlite", "mongomock", "nx-27017"]



@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[AnswerCache, DocumentStore]]:
    """An answer cache and the document store (with its answer log) on the same backend and database."""
    if request.param == "sqlite":
        from infra.stores.sqlite import SqliteAnswerCache, SqliteDocumentStore

        cache, store = SqliteAnswerCache(tmp_path / "ragbus.sqlite"), SqliteDocumentStore(tmp_path / "ragbus.sqlite")
        yield cache, store
        cache.close()
        store.close()
        return
    from infra.stores.mongo import MongoAnswerCache, MongoDocumentStore

    client, database = mongo_database(request.param, request)
    yield MongoAnswerCache(client, database), MongoDocumentStore(client, database)  # type: ignore[arg-type]


def test_a_missing_entry_is_absent_not_an_error(backend: tuple[AnswerCache, DocumentStore]) -> None:
    cache, _ = backend
    assert cache.get("t", "k") is None


def test_put_then_get_returns_the_same_answer_per_tenant(backend: tuple[AnswerCache, DocumentStore]) -> None:
    cache, _ = backend
    cache.put("t", "k", '{"answer": "per partition"}')
    assert cache.get("t", "k") == '{"answer": "per partition"}'
    assert cache.get("other", "k") is None


def test_the_first_entry_for_a_key_stays(backend: tuple[AnswerCache, DocumentStore]) -> None:
    cache, _ = backend
    cache.put("t", "k", '{"a": 1}')
    cache.put("t", "k", '{"a": 2}')  # a concurrent answerer answered the same question over the same chunks
    assert cache.get("t", "k") == '{"a": 1}'


def test_the_answer_log_and_the_cache_never_share_an_entry(backend: tuple[AnswerCache, DocumentStore]) -> None:
    """The answer log's keys are the clients' query ids, any printable text: a query id equal to a cache key (or
    to the `cache:<key>` of the versions that kept the cache in the log) reaches only the log."""
    cache, store = backend
    key = "9f" * 32
    cache.put("t", key, '{"from": "cache"}')
    for query_id in (key, f"cache:{key}"):
        assert store.get_answer("t", query_id) is None
        assert store.put_answer("t", query_id, '{"from": "log"}') == '{"from": "log"}'
    assert cache.get("t", key) == '{"from": "cache"}'
    assert cache.get("t", f"cache:{key}") is None


def test_deleted_entries_and_logged_answers_are_gone(backend: tuple[AnswerCache, DocumentStore]) -> None:
    """What erasing a conversation relies on: its cached and its logged answers can be deleted, others stay."""
    cache, store = backend
    for key in ("a", "b"):
        cache.put("t", key, f'{{"k": "{key}"}}')
        store.put_answer("t", key, f'{{"q": "{key}"}}')
    cache.delete("t", ["a", "missing"])
    store.delete_answers("t", ["a", "missing"])
    cache.delete("t", [])
    store.delete_answers("t", [])
    assert cache.get("t", "a") is None and store.get_answer("t", "a") is None
    assert cache.get("t", "b") == '{"k": "b"}' and store.get_answer("t", "b") == '{"q": "b"}'
