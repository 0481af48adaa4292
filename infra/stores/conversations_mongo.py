"""Conversations' turns on MongoDB, in a collection of their own beside the answer log.

A turn is a document with a unique (tenant, conversation id, owner, query id) index: appending it again (a
redelivered query) leaves the stored one. Expired turns are deleted on the tenant's next append, which returns
them so that their answers are erased too (a TTL index would delete them silently, leaving those answers); reads
filter on `expires_at` either way. Turns beyond
`max_turns` are not read, but stay until they expire: a deletion must still find them to erase their answers. Writes use
the majority write concern, as the answer log does: a turn acknowledged survives a failover.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, MongoClient
from pymongo.errors import DuplicateKeyError

from kernel.ports import Turn

from .mongo import MAJORITY, _classified

_KEY = ("tenant", "conversation_id", "owner")


def _turn(row: Mapping[str, Any]) -> Turn:
    return Turn(row["query_id"], row["question"], row["search_query"], row["answer"], tuple(row["chunk_ids"]),
                row.get("log_key", ""), row.get("cache_key", ""))


class MongoConversationStore:
    def __init__(self, client: MongoClient[Any], database: str, *, max_turns: int, ttl_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self._col = client.get_database(database, write_concern=MAJORITY).get_collection("conversation_turns")
        self._col.create_index([*((k, ASCENDING) for k in _KEY), ("query_id", ASCENDING)], unique=True)
        self._col.create_index([*((k, ASCENDING) for k in _KEY), ("seq", ASCENDING)])
        self._col.create_index([("tenant", ASCENDING), ("expires_at", ASCENDING)])
        self._max_turns, self._ttl_s, self._clock = max_turns, ttl_s, clock

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    @_classified
    def turns(self, tenant: str, conversation_id: str, owner: str) -> list[Turn]:
        rows = self._col.find({"tenant": tenant, "conversation_id": conversation_id, "owner": owner,
                               "expires_at": {"$gt": self._now()}}).sort("seq", DESCENDING).limit(self._max_turns)
        return [_turn(r) for r in reversed(list(rows))]

    @_classified
    def add_turn(self, tenant: str, conversation_id: str, owner: str, turn: Turn) -> list[Turn]:
        now = self._now()
        key = {"tenant": tenant, "conversation_id": conversation_id, "owner": owner}
        rows = list(self._col.find({"tenant": tenant, "expires_at": {"$lte": now}}))
        if rows:
            self._col.delete_many({"_id": {"$in": [r["_id"] for r in rows]}})
        last = self._col.find_one(key, sort=[("seq", DESCENDING)])
        with contextlib.suppress(DuplicateKeyError):  # a redelivery: the turn is stored already
            self._col.insert_one(key | {
                "query_id": turn.query_id, "seq": (int(last["seq"]) if last else 0) + 1, "question": turn.question,
                "search_query": turn.search_query, "answer": turn.answer, "chunk_ids": list(turn.chunk_ids),
                "log_key": turn.log_key, "cache_key": turn.cache_key,
                "expires_at": datetime.fromtimestamp(self._clock() + self._ttl_s, UTC)})
        return [_turn(r) for r in rows]

    @_classified
    def stored_turns(self, tenant: str, conversation_id: str) -> list[Turn]:
        rows = self._col.find({"tenant": tenant, "conversation_id": conversation_id}).sort(
            [("owner", ASCENDING), ("seq", ASCENDING)])
        return [_turn(r) for r in rows]

    @_classified
    def delete(self, tenant: str, conversation_id: str) -> None:
        self._col.delete_many({"tenant": tenant, "conversation_id": conversation_id})

    def close(self) -> None:
        """The client is shared (see wiring); closing it is the owner's job."""
