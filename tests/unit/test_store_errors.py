"""Store failures are classified by exception class, error label and server code, never by message."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from pymongo.errors import (
    AutoReconnect,
    DocumentTooLarge,
    NetworkTimeout,
    NotPrimaryError,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
    WTimeoutError,
)

from infra.stores.mongo import classify
from infra.stores.sqlite import SqliteDocumentStore
from kernel.errors import ConfigurationError, PoisonMessageError, RetryableError


def labelled(label: str) -> PyMongoError:
    exc = OperationFailure("write failed", code=2)
    exc._error_labels = {label}  # what pymongo sets from the server's reply
    return exc


@pytest.mark.parametrize(("exc", "expected"), [
    (AutoReconnect("connection closed"), RetryableError),
    (NetworkTimeout("timed out"), RetryableError),
    (ServerSelectionTimeoutError("no primary"), RetryableError),
    (NotPrimaryError("not primary"), RetryableError),
    (WTimeoutError("waiting for replication", code=64), RetryableError),
    (OperationFailure("shutting down", code=91), RetryableError),
    (OperationFailure("stepped down", code=189), RetryableError),
    (labelled("RetryableWriteError"), RetryableError),
    (OperationFailure("not authorised", code=13), ConfigurationError),
    (OperationFailure("auth failed", code=18), ConfigurationError),
    (DocumentTooLarge("over 16 MiB"), PoisonMessageError),
    (OperationFailure("bad value", code=2), OperationFailure),  # a bug: surfaces as itself
], ids=lambda v: v.__name__ if isinstance(v, type) else type(v).__name__)
def test_mongodb_errors_say_what_the_runner_must_do(exc: PyMongoError, expected: type[Exception]) -> None:
    got = classify(exc)
    assert isinstance(got, expected)
    if expected is OperationFailure:
        assert got is exc


def test_a_busy_sqlite_database_is_transient_and_a_broken_query_is_not(tmp_path: Path) -> None:
    store = SqliteDocumentStore(tmp_path / "db.sqlite")
    blocker = sqlite3.connect(str(tmp_path / "db.sqlite"), timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    store._db._conn.execute("PRAGMA busy_timeout=50")
    with pytest.raises(RetryableError, match="SQLITE_BUSY"):
        store.put_answer("t", "q", "{}")
    blocker.rollback()
    with pytest.raises(sqlite3.OperationalError, match="no such table"), store._db.transaction() as conn:
        conn.execute("SELECT * FROM no_such_table")
