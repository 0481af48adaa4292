"""Conversations' turns on SQLite, in the data directory's database beside the answer log.

A turn is a row keyed by (tenant, conversation id, owner, query id): appending a turn again (a redelivered query)
keeps the row there. Each append also deletes the tenant's expired turns and returns them (their answers are
erased from the answer log and cache by the caller), so nothing outlives its TTL by more than the next turn
stored in that tenant (and `turns` never returns an expired one). Turns beyond `max_turns` are not
read, but stay until they expire: a deletion must still find them to erase their answers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kernel.ports import Turn

from .sqlite import _Db

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversation_turns (
  tenant TEXT NOT NULL, conversation_id TEXT NOT NULL, owner TEXT NOT NULL, query_id TEXT NOT NULL,
  seq INTEGER NOT NULL, question TEXT NOT NULL, search_query TEXT NOT NULL, answer TEXT NOT NULL,
  chunk_ids TEXT NOT NULL, log_key TEXT NOT NULL, cache_key TEXT NOT NULL, expires_at REAL NOT NULL,
  PRIMARY KEY (tenant, conversation_id, owner, query_id));
CREATE INDEX IF NOT EXISTS conversation_turns_seq ON conversation_turns (tenant, conversation_id, owner, seq);
CREATE INDEX IF NOT EXISTS conversation_turns_expiry ON conversation_turns (tenant, expires_at);
"""
_COLUMNS = "query_id, question, search_query, answer, chunk_ids, log_key, cache_key"


def _turn(row: Sequence[Any]) -> Turn:
    return Turn(row[0], row[1], row[2], row[3], tuple(json.loads(row[4])), row[5], row[6])


class SqliteConversationStore:
    def __init__(self, path: Path, *, max_turns: int, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        self._db = _Db(path)
        with self._db.reading() as conn:
            conn.executescript(_SCHEMA)
        self._max_turns, self._ttl_s, self._clock = max_turns, ttl_s, clock

    def turns(self, tenant: str, conversation_id: str, owner: str) -> list[Turn]:
        with self._db.reading() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM conversation_turns WHERE tenant=? AND conversation_id=? AND owner=?"
                " AND expires_at>? ORDER BY seq DESC LIMIT ?",
                (tenant, conversation_id, owner, self._clock(), self._max_turns)).fetchall()
        return [_turn(r) for r in reversed(rows)]

    def add_turn(self, tenant: str, conversation_id: str, owner: str, turn: Turn) -> list[Turn]:
        now = self._clock()
        key = (tenant, conversation_id, owner)
        with self._db.transaction() as conn:
            expired = [_turn(r) for r in conn.execute(
                f"SELECT {_COLUMNS} FROM conversation_turns WHERE tenant=? AND expires_at<=?", (tenant, now))]
            conn.execute("DELETE FROM conversation_turns WHERE tenant=? AND expires_at<=?", (tenant, now))
            seq = conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM conversation_turns WHERE tenant=? AND"
                               " conversation_id=? AND owner=?", key).fetchone()[0]
            conn.execute(
                f"INSERT OR IGNORE INTO conversation_turns (tenant, conversation_id, owner, seq, {_COLUMNS},"
                " expires_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (*key, seq, turn.query_id, turn.question, turn.search_query, turn.answer,
                 json.dumps(list(turn.chunk_ids)), turn.log_key, turn.cache_key, now + self._ttl_s))
        return expired

    def stored_turns(self, tenant: str, conversation_id: str) -> list[Turn]:
        with self._db.reading() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM conversation_turns WHERE tenant=? AND conversation_id=?"
                                " ORDER BY owner, seq", (tenant, conversation_id)).fetchall()
        return [_turn(r) for r in rows]

    def delete(self, tenant: str, conversation_id: str) -> None:
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM conversation_turns WHERE tenant=? AND conversation_id=?",
                         (tenant, conversation_id))

    def close(self) -> None:
        self._db.close()
