"""The ConversationStore contract: every backend (SQLite; MongoDB through mongomock and through nx-27017, a
MongoDB wire-protocol server pymongo talks to over a socket) keeps turns per tenant,
conversation id and owner, bounded in turns read and in time, and erases a conversation whoever owns it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernel.ports import ConversationStore, Turn

from .conftest import mongo_database

MAX_TURNS, TTL_S = 3, 100.0


class Clock:
    def __init__(self) -> None:
        self.now = time.time()  # mongomock applies TTL indexes by the wall clock

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["sqlite", "mongomock", "nx-27017"])
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Iterator[ConversationStore]:
    if request.param == "sqlite":
        from infra.stores.conversations_sqlite import SqliteConversationStore

        sqlite = SqliteConversationStore(tmp_path / "ragbus.sqlite", max_turns=MAX_TURNS, ttl_s=TTL_S, clock=clock)
        yield sqlite
        sqlite.close()
        return
    from infra.stores.conversations_mongo import MongoConversationStore

    client, database = mongo_database(request.param, request)
    yield MongoConversationStore(client, database, max_turns=MAX_TURNS, ttl_s=TTL_S,  # type: ignore[arg-type]
                                 clock=clock)


def turn(n: int) -> Turn:
    return Turn(f"q{n}", f"question {n}", f"search {n}", f"answer {n} [1]", (f"c{n}a", f"c{n}b"), f"log{n}", f"k{n}")


def test_an_unknown_conversation_has_no_turns(store: ConversationStore) -> None:
    assert store.turns("t", "nobody", "o") == []
    assert store.stored_turns("t", "nobody") == []
    store.delete("t", "nobody")  # erasing what is not there is no error


def test_turns_come_back_whole_and_in_order(store: ConversationStore) -> None:
    for n in (1, 2):
        store.add_turn("t", "c", "o", turn(n))
    assert store.turns("t", "c", "o") == [turn(1), turn(2)]


def test_a_redelivered_turn_is_stored_once(store: ConversationStore) -> None:
    store.add_turn("t", "c", "o", turn(1))
    store.add_turn("t", "c", "o", turn(2))
    store.add_turn("t", "c", "o", turn(1))
    assert [t.query_id for t in store.turns("t", "c", "o")] == ["q1", "q2"]


def test_another_tenant_or_owner_reads_nothing_of_a_conversation(store: ConversationStore) -> None:
    store.add_turn("t", "c", "alice", turn(1))
    assert store.turns("t", "c", "bob") == []
    assert store.turns("other", "c", "alice") == []
    store.add_turn("t", "c", "bob", turn(9))  # bob's own conversation under the same id
    assert store.turns("t", "c", "alice") == [turn(1)]
    assert store.turns("t", "c", "bob") == [turn(9)]


def test_only_the_newest_turns_are_read_but_every_turn_can_be_erased(store: ConversationStore) -> None:
    for n in range(1, 6):
        store.add_turn("t", "c", "o", turn(n))
    assert [t.query_id for t in store.turns("t", "c", "o")] == ["q3", "q4", "q5"]
    assert len(store.stored_turns("t", "c")) == 5


def test_turns_expire_after_the_ttl(store: ConversationStore, clock: Clock) -> None:
    store.add_turn("t", "c", "o", turn(1))
    clock.now += TTL_S / 2
    store.add_turn("t", "c", "o", turn(2))
    clock.now += TTL_S / 2 + 1
    assert store.turns("t", "c", "o") == [turn(2)]
    clock.now += TTL_S
    assert store.turns("t", "c", "o") == []
    # a write in the tenant deletes its expired turns and returns them (their answers are erased too)
    assert sorted(store.add_turn("t", "other", "o", turn(3)), key=lambda t: t.query_id) == [turn(1), turn(2)]
    assert store.stored_turns("t", "c") == []
    assert store.add_turn("t", "other", "o", turn(4)) == []


def test_delete_erases_every_owner_of_the_id_in_its_tenant_only(store: ConversationStore) -> None:
    for owner in ("alice", "bob"):
        store.add_turn("t", "c", owner, turn(1))
    store.add_turn("t", "kept", "alice", turn(2))
    store.add_turn("other", "c", "alice", turn(3))
    assert {t.log_key for t in store.stored_turns("t", "c")} == {"log1"}
    store.delete("t", "c")
    assert store.stored_turns("t", "c") == []
    assert store.turns("t", "c", "alice") == store.turns("t", "c", "bob") == []
    assert store.turns("t", "kept", "alice") == [turn(2)]
    assert store.turns("other", "c", "alice") == [turn(3)]
