"""Conversations in the answerer: follow-ups searched in context, turns answered in order, isolation by tenant and
asker, the context budget, the answer cache keyed by context, and erasure that leaves nothing of a conversation.
The Claude path runs the official SDK over HTTP against a local Messages API (tests/messages_api.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from consumers.answerer import Answerer
from consumers.conversations import Conversations
from infra.models.claude import ClaudeAnswerer
from infra.models.claude_retrieval import ClaudeRewriter, client_for
from infra.ops.metrics import Metrics
from infra.settings import AnthropicSettings
from infra.stores.conversations_sqlite import SqliteConversationStore
from kernel.ports import AnswerModel, QueryRewriter, Turn
from retrieval.conversation import fit, key_terms, standalone
from retrieval.extractive import ExtractiveAnswerer
from schemas.events import AnswerGenerated, ConversationDeleted, QueryRequested
from tests.messages_api import MessagesApi
from tests.unit.test_stages import Pipeline, doc

SECRET = "zebra-secret-question-7"


@pytest.fixture
def pipe(tmp_path: Path) -> Pipeline:
    p = Pipeline(tmp_path)
    p.run(doc(1, "Kafka keeps the order of messages within one partition of a topic.", doc_id="kafka-order"))
    p.run(doc(1, "Kafka consumers commit offsets to record what they have read.", doc_id="kafka-offsets"))
    p.run(doc(1, "MongoDB keeps documents as BSON and replicates them.", doc_id="mongo"))
    return p


@pytest.fixture
def api() -> Iterator[MessagesApi]:
    with MessagesApi() as server:
        yield server


def answerer(pipe: Pipeline, tmp: Path, model: AnswerModel | None = None, condenser: QueryRewriter | None = None,
             budget: int = 4_000) -> Answerer:
    store = SqliteConversationStore(tmp / "db.sqlite", max_turns=20, ttl_s=3600)
    return Answerer(pipe.retriever(), model or ExtractiveAnswerer(), pipe.store, Metrics(), pipe.outputs.append,
                    cache=pipe.answer_cache, concurrency=2,
                    conversations=Conversations(store, condenser=condenser, context_tokens=budget))


def anthropic_settings(api: MessagesApi) -> AnthropicSettings:
    return AnthropicSettings(RAGBUS_ANTHROPIC_API_KEY="sk-test", RAGBUS_ANTHROPIC_BASE_URL=api.url,  # type: ignore[call-arg]
                             max_retries=0)


def claude(api: MessagesApi) -> ClaudeAnswerer:
    return ClaudeAnswerer(anthropic_settings(api))


def ask(a: Answerer, text: str, conversation: str | None = "c1", **kw: object) -> AnswerGenerated:
    results = a.handle([QueryRequested(text=text, conversation_id=conversation, **kw)])  # type: ignore[arg-type]
    assert isinstance(results[0], list), results[0]
    answer = results[0][0].event
    assert isinstance(answer, AnswerGenerated)
    return answer


def turn(question: str, search_query: str = "", answer: str = "an answer") -> Turn:
    return Turn("q", question, search_query or question, answer)


# -- the offline rule and the budget (retrieval/conversation.py) ----------------------------------------------

def test_the_offline_rule_carries_the_previous_subject_into_an_elliptical_follow_up() -> None:
    previous = turn("How do I parcel out work among a bunch of worker threads?")
    assert key_terms(previous.question) == ["parcel", "work", "among", "bunch", "worker", "threads"]
    assert standalone("How do I kill it?", [previous]) == "How do I kill it? parcel work among bunch worker threads"
    assert standalone("Do worker threads stop?", [previous]) == "Do worker threads stop? parcel work among bunch"
    assert standalone("What about threads?", []) == "What about threads?"


def test_the_budget_keeps_the_newest_turns_and_counts_the_others() -> None:
    turns = [turn(f"question {n}", answer="x" * 400) for n in range(5)]  # about 103 tokens each
    kept, dropped = fit(turns, 250)
    assert [t.question for t in kept] == ["question 3", "question 4"] and dropped == 3
    assert fit(turns, 0) == ([], 5)  # over budget: no context at all, said on the answer


# -- the answerer ------------------------------------------------------------------------------------------

def test_a_follow_up_is_searched_with_its_conversations_subject(pipe: Pipeline, tmp_path: Path) -> None:
    a = answerer(pipe, tmp_path)
    first = ask(a, "How does Kafka keep message order?")
    follow = ask(a, "and what about offsets?")
    assert (first.turn, follow.turn, first.conversation_id) == (1, 2, "c1")
    assert first.search_query == "How does Kafka keep message order?"
    assert follow.search_query.startswith("and what about offsets?") and "Kafka" in follow.search_query.title()
    assert follow.citations[0].document_id == "kafka-offsets"
    alone = ask(a, "and what about offsets?", conversation=None)
    assert (alone.turn, alone.search_query, alone.conversation_id) == (0, "and what about offsets?", None)


def test_turns_of_one_conversation_in_one_batch_are_answered_in_order(pipe: Pipeline, tmp_path: Path) -> None:
    a = answerer(pipe, tmp_path)
    batch = [QueryRequested(text=t, conversation_id="c") for t in ("Kafka order?", "and offsets?", "and then?")]
    batch.insert(1, QueryRequested(text="MongoDB?", conversation_id="other"))
    answers = [r[0].event for r in a.handle(batch)]  # type: ignore[index]
    assert [x.turn for x in answers] == [1, 1, 2, 3]  # type: ignore[attr-defined]


def test_another_tenants_or_askers_conversation_id_starts_a_new_one(pipe: Pipeline, tmp_path: Path) -> None:
    a = answerer(pipe, tmp_path)
    ask(a, "How does Kafka keep message order?", principals=["user:alice"])
    for other in ({"tenant": "other"}, {"principals": ["user:bob"]}, {}):
        started = ask(a, "and offsets?", **other)
        assert (started.turn, started.search_query) == (1, "and offsets?"), other
    assert ask(a, "and replication?", principals=["user:alice"]).turn == 2


def test_history_over_the_budget_is_dropped_and_said_on_the_answer(pipe: Pipeline, tmp_path: Path,
                                                                 api: MessagesApi) -> None:
    a = answerer(pipe, tmp_path, model=claude(api), budget=10)
    ask(a, "How does Kafka keep message order within a partition of a topic?")
    follow = ask(a, "and offsets?")
    assert (follow.turn, follow.dropped_turns, follow.degraded) == (2, 1, False)
    assert len(api.requests[-1]["messages"]) == 1  # no prior turns sent


def test_claude_receives_the_earlier_turns_as_prior_messages(pipe: Pipeline, tmp_path: Path,
                                                            api: MessagesApi) -> None:
    a = answerer(pipe, tmp_path, model=claude(api), condenser=ClaudeRewriter(
        client_for(anthropic_settings(api)), "claude-haiku-4-5", style="standalone"))
    first = ask(a, "How does Kafka keep message order?")
    follow = ask(a, "and offsets?")
    rewrite, generate = api.requests[-2], api.requests[-1]
    assert rewrite["tool_choice"]["name"] == "search_queries"
    assert "User: How does Kafka keep message order?" in rewrite["messages"][0]["content"][0]["text"]
    assert follow.search_query == "and offsets? (How does Kafka keep message order?)"
    prior, current = generate["messages"][:-1], generate["messages"][-1]
    assert [m["role"] for m in prior] == ["user", "assistant"]
    assert prior[0]["content"] == [{"type": "text", "text": "Question: How does Kafka keep message order?"}]
    assert prior[1]["content"][0]["text"] == first.answer.replace("[1]", "").strip()
    assert all(b["type"] == "text" for m in prior for b in m["content"])  # nothing citable from earlier turns
    sent = [b["source"] for b in current["content"] if b["type"] == "search_result"]
    assert current["content"][-1]["text"] == "Question: and offsets?"
    assert {c.chunk_id for c in follow.citations} <= set(sent) and follow.citations


def test_the_answer_cache_never_serves_another_conversations_context(pipe: Pipeline, tmp_path: Path,
                                                                    api: MessagesApi) -> None:
    a = answerer(pipe, tmp_path, model=claude(api))
    for conversation in ("c1", "c2"):
        ask(a, f"Kafka order? {conversation}", conversation=conversation)
    one, two = (ask(a, "and offsets?", conversation=c) for c in ("c1", "c2"))
    assert not one.cached and not two.cached
    first_again = ask(a, "Kafka order? c1", conversation="c3")  # a first turn: any standalone question's answer
    assert first_again.cached and first_again.turn == 1


def test_a_deleted_conversation_leaves_nothing_behind(pipe: Pipeline, tmp_path: Path, api: MessagesApi) -> None:
    a = answerer(pipe, tmp_path, model=claude(api))
    ask(a, f"How does Kafka keep order? {SECRET}", principals=["user:alice"])
    ask(a, f"and offsets? {SECRET}", principals=["user:alice"])
    ask(a, f"and offsets? {SECRET}", principals=["user:bob"])  # another asker's conversation under the id
    ask(a, f"How does Kafka keep order? {SECRET}", conversation="kept")
    assert a.handle([ConversationDeleted(conversation_id="c1")]) == [[]]

    with sqlite3.connect(tmp_path / "db.sqlite") as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = [repr(row) for t in tables for row in db.execute(f"SELECT * FROM {t}")]
    holding = [r for r in rows if SECRET in r]
    assert holding and all('"conversation_id":"kept"' in r or "'kept'" in r for r in holding), holding
    again = ask(a, "and offsets?", principals=["user:alice"])
    assert (again.turn, again.search_query) == (1, "and offsets?")
    assert a.handle([ConversationDeleted(conversation_id="never-was")]) == [[]]  # no error


def test_an_expired_conversation_starts_afresh(pipe: Pipeline, tmp_path: Path) -> None:
    now = [1_000.0]
    store = SqliteConversationStore(tmp_path / "db.sqlite", max_turns=20, ttl_s=60, clock=lambda: now[0])
    a = Answerer(pipe.retriever(), ExtractiveAnswerer(), pipe.store, Metrics(), pipe.outputs.append, cache=None,
                 conversations=Conversations(store))
    first = ask(a, "How does Kafka keep message order?")
    assert pipe.store.get_answer("default", first.query_id) is not None
    now[0] += 61
    again = ask(a, "and offsets?")
    assert (again.turn, again.search_query) == (1, "and offsets?")
    assert pipe.store.get_answer("default", first.query_id) is None  # the expired turn's answer went with it


def test_the_cli_keys_a_conversations_turns_by_its_id(monkeypatch: pytest.MonkeyPatch) -> None:
    from ragbus import client

    sent: list[tuple[object, str]] = []

    class Producer:
        def send(self, topic: object, key: str, event: object, headers: object) -> None:
            sent.append((topic, key))

        def flush(self) -> None: ...

    qc = client.QueryClient.__new__(client.QueryClient)
    qc._producer, qc._topic, qc._replies = Producer(), "ragbus.queries.v1", None  # type: ignore[assignment]
    monkeypatch.setattr(client, "collect_answers", lambda *args: {})
    qc.ask([QueryRequested(query_id="q1", text="a", conversation_id="chat-9"), QueryRequested(query_id="q2", text="b")],
           1.0)
    assert [key for _, key in sent] == ["chat-9", "q2"]
