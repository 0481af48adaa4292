"""Embedded document store, embedding cache and answer cache on SQLite (WAL), in the data directory.

Several worker processes share the file: WAL lets readers run beside the one writer, and
`busy_timeout` makes writers wait for each other instead of failing. Each call is one short
transaction, so a killed process leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from kernel.errors import RetryableError
from kernel.generations import (
    FIRST,
    Build,
    Generation,
    GenerationConflict,
    Progress,
    State,
    refuse_drop,
    refuse_rollback,
    refuse_start,
    refuse_switch,
)
from kernel.permissions import Acl, AclOrder
from kernel.ports import ChunkRecord, DocumentRecord
from kernel.versions import accept_status, merge_record
from schemas.events import ContentRef, Status, content_hash

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
  tenant TEXT NOT NULL, document_id TEXT NOT NULL, version INTEGER NOT NULL, status TEXT NOT NULL,
  status_rank INTEGER NOT NULL, chunks INTEGER NOT NULL DEFAULT 0, error TEXT NOT NULL DEFAULT '',
  content_hash TEXT NOT NULL DEFAULT '', title TEXT NOT NULL DEFAULT '', source TEXT NOT NULL DEFAULT '',
  metadata TEXT NOT NULL DEFAULT '{}', updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
  content_type TEXT NOT NULL DEFAULT 'text/plain', PRIMARY KEY (tenant, document_id));
CREATE INDEX IF NOT EXISTS documents_status ON documents (tenant, status);
CREATE TABLE IF NOT EXISTS chunk_ids (
  chunk_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, document_id TEXT NOT NULL, version INTEGER NOT NULL,
  idx INTEGER NOT NULL, generation TEXT NOT NULL DEFAULT 'g1');
CREATE INDEX IF NOT EXISTS chunk_ids_doc ON chunk_ids (tenant, document_id, version);
CREATE TABLE IF NOT EXISTS contents (sha256 TEXT PRIMARY KEY, size INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS answers (
  tenant TEXT NOT NULL, query_id TEXT NOT NULL, answer TEXT NOT NULL,
  created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')), PRIMARY KEY (tenant, query_id));
CREATE TABLE IF NOT EXISTS embeddings (key TEXT PRIMARY KEY, vector BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS acls (
  tenant TEXT NOT NULL, document_id TEXT NOT NULL, principals TEXT, acl_version INTEGER NOT NULL,
  kind INTEGER NOT NULL, content_version INTEGER NOT NULL, PRIMARY KEY (tenant, document_id));
CREATE TABLE IF NOT EXISTS answer_cache (
  tenant TEXT NOT NULL, key TEXT NOT NULL, answer TEXT NOT NULL,
  created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')), PRIMARY KEY (tenant, key));
CREATE TABLE IF NOT EXISTS generations (
  name TEXT PRIMARY KEY, build TEXT NOT NULL, state TEXT NOT NULL, created_at TEXT NOT NULL,
  queued INTEGER NOT NULL DEFAULT 0);
CREATE UNIQUE INDEX IF NOT EXISTS generations_state ON generations (state);
CREATE TABLE IF NOT EXISTS generation_names (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS generation_progress (
  generation TEXT NOT NULL, tenant TEXT NOT NULL, document_id TEXT NOT NULL, version INTEGER NOT NULL,
  PRIMARY KEY (generation, tenant, document_id));
"""

#: Columns added since the first schema: (table, column, definition). A file created before them gets them when
#: it is opened (CREATE TABLE IF NOT EXISTS leaves an existing table as it is).
_ADDED_COLUMNS = (
    ("documents", "content_type", "TEXT NOT NULL DEFAULT 'text/plain'"),
    ("chunk_ids", "generation", "TEXT NOT NULL DEFAULT 'g1'"),
)
#: Indexes on added columns: created once the columns exist.
_LATER_INDEXES = """
CREATE INDEX IF NOT EXISTS chunk_ids_generation ON chunk_ids (generation);
"""


#: SQLite result codes (primary, the low byte of an extended code) that pass: another writer holds the lock,
#: the disk is full or failing. Anything else (a missing table, a malformed query) is a bug to surface.
TRANSIENT = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR})

_DOC_COLUMNS = ("tenant, document_id, version, status, chunks, error, content_hash, title, source, metadata,"
                " content_type")


def _document(row: Sequence[Any]) -> DocumentRecord:
    return DocumentRecord(row[0], row[1], row[2], Status(row[3]), row[4], row[5], row[6], row[7], row[8],
                          json.loads(row[9]), row[10])


_GEN_COLUMNS = "name, build, state, created_at, queued"


def _generation(row: Sequence[Any]) -> Generation:
    return Generation(row[0], Build.from_json(row[1]), State(row[2]), datetime.fromisoformat(row[3]), int(row[4]))


def _number(name: str) -> int:
    return int(name[1:])


def _now() -> str:
    return datetime.now(UTC).isoformat()


class _Db:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(path), timeout=30, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=30000")
        self._lock = threading.RLock()
        with self._lock:
            self._conn.executescript(_SCHEMA)
            self._migrate()

    def _migrate(self) -> None:
        """Bring a file created with an older schema up to date, in one transaction (several processes may
        open the same old file at once: the second finds the columns there)."""
        with self.transaction() as conn:
            for table, column, definition in _ADDED_COLUMNS:
                if column not in {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
            for statement in filter(str.strip, _LATER_INDEXES.split(";")):
                conn.execute(statement)

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection for reads outside a write transaction (autocommit: each statement sees the latest
        committed state), held by this thread until the block ends."""
        with self._lock:
            yield self._conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction (BEGIN IMMEDIATE: writers queue on the lock instead of failing later);
        a locked or busy database is transient for the runner."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if exc.sqlite_errorcode & 0xFF in TRANSIENT:
                    raise RetryableError(f"sqlite: {exc.sqlite_errorname}: {exc}") from exc
                raise
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self._conn.close()


class SqliteDocumentStore:
    def __init__(self, path: Path) -> None:
        self._db = _Db(path)

    # -- documents -------------------------------------------------------------------------
    def get_document(self, tenant: str, document_id: str) -> DocumentRecord | None:
        with self._db.reading() as conn:
            return self._get_locked(conn, tenant, document_id)

    def apply_status(self, record: DocumentRecord) -> bool:
        with self._db.transaction() as conn:
            current = self._get_locked(conn, record.tenant, record.document_id)
            if not accept_status(current, record):
                return False
            merged = merge_record(current, record)
            conn.execute(
                "INSERT INTO documents (tenant, document_id, version, status, status_rank, chunks, error,"
                " content_hash, title, source, metadata, content_type) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT (tenant, document_id) DO UPDATE SET version=excluded.version,"
                " status=excluded.status, status_rank=excluded.status_rank, chunks=excluded.chunks,"
                " error=excluded.error, content_hash=excluded.content_hash, title=excluded.title,"
                " source=excluded.source, metadata=excluded.metadata, content_type=excluded.content_type,"
                " updated_at=strftime('%Y-%m-%dT%H:%M:%fZ','now')",
                (merged.tenant, merged.document_id, merged.version, merged.status.value, merged.status.rank,
                 merged.chunks, merged.error, merged.content_hash, merged.title, merged.source,
                 json.dumps(dict(merged.metadata)), merged.content_type))
            return True

    def _get_locked(self, conn: sqlite3.Connection, tenant: str, document_id: str) -> DocumentRecord | None:
        row = conn.execute(f"SELECT {_DOC_COLUMNS} FROM documents WHERE tenant=? AND document_id=?",
                           (tenant, document_id)).fetchone()
        return None if row is None else _document(row)

    def list_documents(self, tenant: str | None = None, limit: int = 10_000) -> list[DocumentRecord]:
        sql = f"SELECT {_DOC_COLUMNS} FROM documents"
        args: tuple[object, ...] = ()
        if tenant is not None:
            sql, args = sql + " WHERE tenant=?", (tenant,)
        with self._db.reading() as conn:
            rows = conn.execute(sql + " ORDER BY tenant, document_id LIMIT ?", (*args, limit)).fetchall()
        return [_document(r) for r in rows]

    def status_counts(self, tenant: str | None = None) -> dict[str, int]:
        sql, args = "SELECT status, count(*) FROM documents", cast(tuple[object, ...], ())
        if tenant is not None:
            sql, args = sql + " WHERE tenant=?", (tenant,)
        with self._db.reading() as conn:
            return dict(conn.execute(sql + " GROUP BY status", args).fetchall())

    # -- chunks ----------------------------------------------------------------------------
    def indexed_documents(self, after: tuple[str, str] | None = None, limit: int = 1000) -> list[DocumentRecord]:
        tenant, document_id = after or ("", "")
        with self._db.reading() as conn:
            rows = conn.execute(
                f"SELECT {_DOC_COLUMNS} FROM documents WHERE status=? AND (tenant, document_id) > (?, ?)"
                " ORDER BY tenant, document_id LIMIT ?",
                (Status.INDEXED.value, tenant, document_id, limit)).fetchall()
        return [_document(r) for r in rows]

    def upsert_chunks(self, chunks: Sequence[ChunkRecord], generation: str = FIRST) -> None:
        rows = [(c.chunk_id, c.tenant, c.document_id, c.version, c.index, generation) for c in chunks]
        self._write("INSERT OR REPLACE INTO chunk_ids (chunk_id, tenant, document_id, version, idx, generation)"
                    " VALUES (?,?,?,?,?,?)", rows)

    def delete_chunk_versions(self, tenant: str, document_id: str, *, below: int) -> None:
        self._write("DELETE FROM chunk_ids WHERE tenant=? AND document_id=? AND version<?",
                    [(tenant, document_id, below)])

    def chunk_versions(self, tenant: str, document_id: str, generation: str = FIRST) -> list[tuple[str, int]]:
        with self._db.reading() as conn:
            return [(r[0], r[1]) for r in conn.execute(
                "SELECT chunk_id, version FROM chunk_ids WHERE tenant=? AND document_id=? AND generation=?"
                " ORDER BY version, idx", (tenant, document_id, generation)).fetchall()]

    def count_chunks(self, tenant: str | None = None, generation: str | None = None) -> int:
        """Chunk rows of `tenant` (None: every tenant) in `generation` (None: every generation)."""
        where = [(c, v) for c, v in (("tenant", tenant), ("generation", generation)) if v is not None]
        sql = "SELECT count(*) FROM chunk_ids" + (" WHERE " + " AND ".join(f"{c}=?" for c, _ in where) if where else "")
        with self._db.reading() as conn:
            return int(conn.execute(sql, tuple(v for _, v in where)).fetchone()[0])

    # -- index generations (kernel/generations.py) -------------------------------------------------
    def generations(self) -> list[Generation]:
        with self._db.reading() as conn:
            return self._generations_locked(conn)

    @staticmethod
    def _generations_locked(conn: sqlite3.Connection) -> list[Generation]:
        rows = conn.execute(f"SELECT {_GEN_COLUMNS} FROM generations").fetchall()
        return sorted((_generation(r) for r in rows), key=lambda g: _number(g.name))

    def ensure_first(self, build: Build) -> list[Generation]:
        with self._db.transaction() as conn:  # one writer at a time decides: concurrent callers converge
            if conn.execute("SELECT count(*) FROM generations").fetchone()[0] == 0:
                conn.execute(f"INSERT INTO generations ({_GEN_COLUMNS}) VALUES (?,?,?,?,?)",
                             (FIRST, build.to_json(), State.SERVING.value, _now(), 0))
            return self._generations_locked(conn)

    def start_generation(self, build: Build, queued: int) -> Generation:
        with self._db.transaction() as conn:
            refuse_start(self._generations_locked(conn))
            used = [r[0] for r in conn.execute("SELECT name FROM generation_names UNION SELECT name FROM generations")]
            name = f"g{max(map(_number, used), default=0) + 1}"
            conn.execute("INSERT INTO generation_names (name) VALUES (?)", (name,))
            created = _now()
            conn.execute(f"INSERT INTO generations ({_GEN_COLUMNS}) VALUES (?,?,?,?,?)",
                         (name, build.to_json(), State.BUILDING.value, created, queued))
        return Generation(name, build, State.BUILDING, datetime.fromisoformat(created), queued)

    def set_queued(self, name: str, queued: int) -> None:
        with self._db.transaction() as conn:
            if conn.execute("UPDATE generations SET queued=? WHERE name=?", (queued, name)).rowcount == 0:
                raise GenerationConflict(f"no generation {name} is recorded")

    def switch(self, name: str) -> None:
        with self._db.transaction() as conn:
            refuse_switch(self._generations_locked(conn), name)
            conn.execute("UPDATE generations SET state=? WHERE state=?", (State.OLD.value, State.SERVING.value))
            conn.execute("UPDATE generations SET state=? WHERE name=?", (State.SERVING.value, name))

    def rollback(self) -> str:
        with self._db.transaction() as conn:
            now_serving = refuse_rollback(self._generations_locked(conn))
            # one state per generation at a time (a unique index): through a placeholder state
            conn.execute("UPDATE generations SET state='rollback' WHERE state=?", (State.SERVING.value,))
            conn.execute("UPDATE generations SET state=? WHERE state=?", (State.SERVING.value, State.OLD.value))
            conn.execute("UPDATE generations SET state=? WHERE state='rollback'", (State.OLD.value,))
        return now_serving

    def drop_generation(self, name: str) -> None:
        with self._db.transaction() as conn:
            refuse_drop(self._generations_locked(conn), name)
            conn.execute("DELETE FROM generations WHERE name=?", (name,))
            conn.execute("DELETE FROM generation_progress WHERE generation=?", (name,))
            conn.execute("DELETE FROM chunk_ids WHERE generation=?", (name,))

    def mark_indexed(self, name: str, tenant: str, document_id: str, version: int) -> None:
        """Ignored for a generation not recorded (dropped meanwhile: its progress must not come back)."""
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO generation_progress (generation, tenant, document_id, version)"
                " SELECT ?,?,?,? WHERE EXISTS (SELECT 1 FROM generations WHERE name=?)"
                " ON CONFLICT (generation, tenant, document_id) DO UPDATE"
                " SET version=max(version, excluded.version)",
                (name, tenant, document_id, version, name))

    def indexed_version(self, name: str, tenant: str, document_id: str) -> int | None:
        with self._db.reading() as conn:
            row = conn.execute("SELECT version FROM generation_progress WHERE generation=? AND tenant=?"
                               " AND document_id=?", (name, tenant, document_id)).fetchone()
        return None if row is None else int(row[0])

    def progress(self, name: str) -> Progress:
        with self._db.reading() as conn:
            total, done = conn.execute(
                "SELECT count(*), count(p.version) FROM documents d LEFT JOIN generation_progress p"
                " ON p.generation=? AND p.tenant=d.tenant AND p.document_id=d.document_id AND p.version>=d.version"
                " WHERE d.status=?", (name, Status.INDEXED.value)).fetchone()
        return Progress(int(done), int(total))

    def behind(self, name: str, limit: int, after: tuple[str, str] | None = None) -> list[tuple[str, str]]:
        tenant, document_id = after or ("", "")
        with self._db.reading() as conn:
            rows = conn.execute(
                "SELECT d.tenant, d.document_id FROM documents d LEFT JOIN generation_progress p"
                " ON p.generation=? AND p.tenant=d.tenant AND p.document_id=d.document_id AND p.version>=d.version"
                " WHERE d.status=? AND p.version IS NULL AND (d.tenant, d.document_id) > (?, ?)"
                " ORDER BY d.tenant, d.document_id LIMIT ?",
                (name, Status.INDEXED.value, tenant, document_id, limit)).fetchall()
        return [(r[0], r[1]) for r in rows]

    # -- claim-check content -------------------------------------------------------------------
    def put_content(self, data: bytes) -> ContentRef:
        ref = ContentRef(sha256=content_hash(data), size=len(data))
        self._write("INSERT OR IGNORE INTO contents VALUES (?,?,?)", [(ref.sha256, ref.size, data)])
        return ref

    def get_content(self, ref: ContentRef) -> bytes:
        with self._db.reading() as conn:
            row = conn.execute("SELECT data FROM contents WHERE sha256=?", (ref.sha256,)).fetchone()
        if row is None:
            raise KeyError(f"no stored content with sha256 {ref.sha256}")
        return bytes(row[0])

    # -- access-control lists -----------------------------------------------------------------------
    def get_acl(self, tenant: str, document_id: str) -> Acl | None:
        with self._db.reading() as conn:
            return _acl(conn.execute(_ACL_SELECT, (tenant, document_id)).fetchone())

    def apply_acl(self, tenant: str, document_id: str, acl: Acl) -> Acl:
        o = acl.order
        with self._db.transaction() as conn:  # one statement decides: the higher order key stays
            conn.execute(
                "INSERT INTO acls VALUES (?,?,?,?,?,?) ON CONFLICT (tenant, document_id) DO UPDATE SET"
                " principals=excluded.principals, acl_version=excluded.acl_version, kind=excluded.kind,"
                " content_version=excluded.content_version"
                " WHERE (excluded.acl_version, excluded.kind, excluded.content_version)"
                " > (acls.acl_version, acls.kind, acls.content_version)",
                (tenant, document_id, None if acl.principals is None else json.dumps(list(acl.principals)),
                 o.acl_version, o.kind, o.content_version))
            row = conn.execute(_ACL_SELECT, (tenant, document_id)).fetchone()
        stored = _acl(row)
        assert stored is not None  # written or kept just now
        return stored

    # -- answers log ------------------------------------------------------------------------------
    def get_answer(self, tenant: str, query_id: str) -> str | None:
        with self._db.reading() as conn:
            row = conn.execute("SELECT answer FROM answers WHERE tenant=? AND query_id=?",
                                        (tenant, query_id)).fetchone()
        return None if row is None else str(row[0])

    def put_answer(self, tenant: str, query_id: str, answer_json: str) -> str:
        with self._db.transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO answers (tenant, query_id, answer) VALUES (?,?,?)",
                         (tenant, query_id, answer_json))
            row = conn.execute("SELECT answer FROM answers WHERE tenant=? AND query_id=?",
                               (tenant, query_id)).fetchone()
        return str(row[0])

    def delete_answers(self, tenant: str, query_ids: Sequence[str]) -> None:
        self._write("DELETE FROM answers WHERE tenant=? AND query_id=?", [(tenant, q) for q in query_ids])

    def _write(self, sql: str, rows: Sequence[tuple[object, ...]]) -> None:
        if rows:
            with self._db.transaction() as conn:
                conn.executemany(sql, rows)

    def close(self) -> None:
        self._db.close()


class SqliteEmbeddingCache:
    def __init__(self, path: Path) -> None:
        self._db = _Db(path)

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        with self._db.reading() as conn:
            for start in range(0, len(keys), 500):
                part = list(keys[start:start + 500])
                marks = ",".join("?" * len(part))
                for key, vec in conn.execute(
                        f"SELECT key, vector FROM embeddings WHERE key IN ({marks})", part):
                    out[key] = bytes(vec)
        return out

    def put_many(self, items: Mapping[str, bytes]) -> None:
        if items:
            with self._db.transaction() as conn:
                conn.executemany("INSERT OR IGNORE INTO embeddings VALUES (?,?)", list(items.items()))

    def close(self) -> None:
        self._db.close()


class SqliteAnswerCache:
    """The answer cache in a table of its own (not the answer log, whose keys are the clients' query ids)."""

    def __init__(self, path: Path) -> None:
        self._db = _Db(path)

    def get(self, tenant: str, key: str) -> str | None:
        with self._db.reading() as conn:
            row = conn.execute("SELECT answer FROM answer_cache WHERE tenant=? AND key=?", (tenant, key)).fetchone()
        return None if row is None else str(row[0])

    def put(self, tenant: str, key: str, answer_json: str) -> None:
        with self._db.transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO answer_cache (tenant, key, answer) VALUES (?,?,?)",
                         (tenant, key, answer_json))

    def delete(self, tenant: str, keys: Sequence[str]) -> None:
        if keys:
            with self._db.transaction() as conn:
                conn.executemany("DELETE FROM answer_cache WHERE tenant=? AND key=?", [(tenant, k) for k in keys])

    def close(self) -> None:
        self._db.close()


_ACL_SELECT = "SELECT principals, acl_version, kind, content_version FROM acls WHERE tenant=? AND document_id=?"


def _acl(row: Sequence[Any] | None) -> Acl | None:
    if row is None:
        return None
    principals = None if row[0] is None else tuple(json.loads(row[0]))
    return Acl(principals, AclOrder(int(row[1]), int(row[2]), int(row[3])))
