"""Embedded document store and embedding cache on SQLite (WAL), in the data directory.

Several worker processes share the file: WAL lets readers run beside the one writer, and
`busy_timeout` makes writers wait for each other instead of failing. Each call is one short
transaction, so a killed process leaves nothing half-written.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

from schemas.events import ContentRef, Status, content_hash

from .errors import RetryableError
from .ports import ChunkRecord, DocumentRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
  tenant TEXT NOT NULL, document_id TEXT NOT NULL, version INTEGER NOT NULL, status TEXT NOT NULL,
  status_rank INTEGER NOT NULL, chunks INTEGER NOT NULL DEFAULT 0, error TEXT NOT NULL DEFAULT '',
  content_hash TEXT NOT NULL DEFAULT '', title TEXT NOT NULL DEFAULT '', source TEXT NOT NULL DEFAULT '',
  updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
  PRIMARY KEY (tenant, document_id));
CREATE INDEX IF NOT EXISTS documents_status ON documents (tenant, status);
CREATE TABLE IF NOT EXISTS chunks (
  chunk_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, document_id TEXT NOT NULL, version INTEGER NOT NULL,
  idx INTEGER NOT NULL, text TEXT NOT NULL, title TEXT NOT NULL, section_path TEXT NOT NULL,
  source TEXT NOT NULL, metadata TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks (tenant, document_id, version);
CREATE TABLE IF NOT EXISTS contents (sha256 TEXT PRIMARY KEY, size INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS answers (
  tenant TEXT NOT NULL, query_id TEXT NOT NULL, answer TEXT NOT NULL,
  created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')), PRIMARY KEY (tenant, query_id));
CREATE TABLE IF NOT EXISTS embeddings (key TEXT PRIMARY KEY, vector BLOB NOT NULL);
"""


def accept_status(current: DocumentRecord | None, new: DocumentRecord) -> bool:
    """The version rules of ports.py, shared by every DocumentStore adapter."""
    if current is None:
        return True
    if new.version != current.version:
        return new.version > current.version
    return new.status.rank > current.status.rank


class _Db:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(path), timeout=30, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=30000")
        self.lock = threading.RLock()
        with self.lock:
            self._conn.executescript(_SCHEMA)

    def tx(self) -> sqlite3.Connection:
        return self._conn

    def close(self) -> None:
        self._conn.close()


class SqliteDocumentStore:
    def __init__(self, path: Path) -> None:
        self._db = _Db(path)

    # -- documents -------------------------------------------------------------------------
    def get_document(self, tenant: str, document_id: str) -> DocumentRecord | None:
        with self._db.lock:
            row = self._db.tx().execute(
                "SELECT version, status, chunks, error, content_hash, title, source FROM documents "
                "WHERE tenant=? AND document_id=?", (tenant, document_id)).fetchone()
        if row is None:
            return None
        return DocumentRecord(tenant, document_id, row[0], Status(row[1]), row[2], row[3], row[4], row[5], row[6])

    def apply_status(self, record: DocumentRecord) -> bool:
        with self._db.lock:
            conn = self._db.tx()
            try:
                conn.execute("BEGIN IMMEDIATE")
                current = self._get_locked(conn, record.tenant, record.document_id)
                if not accept_status(current, record):
                    conn.execute("COMMIT")
                    return False
                keep = current if current is not None and current.version == record.version else None
                conn.execute(
                    "INSERT INTO documents (tenant, document_id, version, status, status_rank, chunks, error,"
                    " content_hash, title, source) VALUES (?,?,?,?,?,?,?,?,?,?) "
                    "ON CONFLICT (tenant, document_id) DO UPDATE SET version=excluded.version,"
                    " status=excluded.status, status_rank=excluded.status_rank, chunks=excluded.chunks,"
                    " error=excluded.error, content_hash=excluded.content_hash, title=excluded.title,"
                    " source=excluded.source, updated_at=strftime('%Y-%m-%dT%H:%M:%fZ','now')",
                    (record.tenant, record.document_id, record.version, record.status.value, record.status.rank,
                     record.chunks or (keep.chunks if keep else 0), record.error,
                     record.content_hash or (keep.content_hash if keep else ""),
                     record.title or (keep.title if keep else ""), record.source or (keep.source if keep else "")))
                conn.execute("COMMIT")
                return True
            except sqlite3.OperationalError as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise RetryableError(f"sqlite: {exc}") from exc

    def _get_locked(self, conn: sqlite3.Connection, tenant: str, document_id: str) -> DocumentRecord | None:
        row = conn.execute("SELECT version, status, chunks, error, content_hash, title, source FROM documents "
                           "WHERE tenant=? AND document_id=?", (tenant, document_id)).fetchone()
        if row is None:
            return None
        return DocumentRecord(tenant, document_id, row[0], Status(row[1]), row[2], row[3], row[4], row[5], row[6])

    def list_documents(self, tenant: str | None = None, limit: int = 10_000) -> list[DocumentRecord]:
        sql = "SELECT tenant, document_id, version, status, chunks, error, content_hash, title, source FROM documents"
        args: tuple[object, ...] = ()
        if tenant is not None:
            sql, args = sql + " WHERE tenant=?", (tenant,)
        with self._db.lock:
            rows = self._db.tx().execute(sql + " ORDER BY tenant, document_id LIMIT ?", (*args, limit)).fetchall()
        return [DocumentRecord(r[0], r[1], r[2], Status(r[3]), r[4], r[5], r[6], r[7], r[8]) for r in rows]

    def status_counts(self, tenant: str | None = None) -> dict[str, int]:
        sql, args = "SELECT status, count(*) FROM documents", cast(tuple[object, ...], ())
        if tenant is not None:
            sql, args = sql + " WHERE tenant=?", (tenant,)
        with self._db.lock:
            return dict(self._db.tx().execute(sql + " GROUP BY status", args).fetchall())

    # -- chunks ----------------------------------------------------------------------------
    def upsert_chunks(self, chunks: Sequence[ChunkRecord]) -> None:
        rows = [(c.chunk_id, c.tenant, c.document_id, c.version, c.index, c.text, c.title,
                 json.dumps(list(c.section_path)), c.source, json.dumps(dict(c.metadata))) for c in chunks]
        self._write("INSERT OR REPLACE INTO chunks VALUES (?,?,?,?,?,?,?,?,?,?)", rows)

    def delete_chunk_versions(self, tenant: str, document_id: str, *, below: int) -> None:
        self._write("DELETE FROM chunks WHERE tenant=? AND document_id=? AND version<?",
                    [(tenant, document_id, below)])

    def chunk_versions(self, tenant: str, document_id: str) -> list[tuple[str, int]]:
        with self._db.lock:
            return [(r[0], r[1]) for r in self._db.tx().execute(
                "SELECT chunk_id, version FROM chunks WHERE tenant=? AND document_id=? ORDER BY version, idx",
                (tenant, document_id)).fetchall()]

    def count_chunks(self, tenant: str | None = None) -> int:
        sql, args = "SELECT count(*) FROM chunks", cast(tuple[object, ...], ())
        if tenant is not None:
            sql, args = sql + " WHERE tenant=?", (tenant,)
        with self._db.lock:
            return int(self._db.tx().execute(sql, args).fetchone()[0])

    # -- claim-check content -------------------------------------------------------------------
    def put_content(self, data: bytes) -> ContentRef:
        ref = ContentRef(sha256=content_hash(data), size=len(data))
        self._write("INSERT OR IGNORE INTO contents VALUES (?,?,?)", [(ref.sha256, ref.size, data)])
        return ref

    def get_content(self, ref: ContentRef) -> bytes:
        with self._db.lock:
            row = self._db.tx().execute("SELECT data FROM contents WHERE sha256=?", (ref.sha256,)).fetchone()
        if row is None:
            raise KeyError(f"no stored content with sha256 {ref.sha256}")
        return bytes(row[0])

    # -- answers log ------------------------------------------------------------------------------
    def get_answer(self, tenant: str, query_id: str) -> str | None:
        with self._db.lock:
            row = self._db.tx().execute("SELECT answer FROM answers WHERE tenant=? AND query_id=?",
                                        (tenant, query_id)).fetchone()
        return None if row is None else str(row[0])

    def put_answer(self, tenant: str, query_id: str, answer_json: str) -> None:
        self._write("INSERT OR IGNORE INTO answers (tenant, query_id, answer) VALUES (?,?,?)",
                    [(tenant, query_id, answer_json)])

    def _write(self, sql: str, rows: Sequence[tuple[object, ...]]) -> None:
        if not rows:
            return
        with self._db.lock:
            conn = self._db.tx()
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(sql, rows)
                conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise RetryableError(f"sqlite: {exc}") from exc

    def close(self) -> None:
        self._db.close()


class SqliteEmbeddingCache:
    def __init__(self, path: Path) -> None:
        self._db = _Db(path)

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        with self._db.lock:
            for start in range(0, len(keys), 500):
                part = list(keys[start:start + 500])
                marks = ",".join("?" * len(part))
                for key, vec in self._db.tx().execute(
                        f"SELECT key, vector FROM embeddings WHERE key IN ({marks})", part):
                    out[key] = bytes(vec)
        return out

    def put_many(self, items: Mapping[str, bytes]) -> None:
        if not items:
            return
        with self._db.lock:
            conn = self._db.tx()
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany("INSERT OR IGNORE INTO embeddings VALUES (?,?)", list(items.items()))
                conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise RetryableError(f"sqlite: {exc}") from exc

    def close(self) -> None:
        self._db.close()
