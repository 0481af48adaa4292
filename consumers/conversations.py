"""The answerer's conversations: where a query stands in its conversation, what it searches, what the model is
given, what is kept of its answer, and how a conversation is erased (the stage: consumers/answerer.py).

A conversation is keyed by tenant, conversation id and owner, the fingerprint of the asker's visibility tokens
(kernel.permissions.fingerprint): the same id named from another tenant, or by an asker who may read other
documents, is another conversation and reads nothing of this one. An unknown, expired, deleted or foreign id
starts a new conversation (`turn` 1 on the answer), never an error.

A follow-up is searched as a standalone query: rewritten by the condenser (Claude, when configured) and, when it
is absent or fails (counted as a degraded retrieval model), by the offline rule (retrieval/conversation.py). The
model is given the newest earlier turns that fit the token budget; the answer says how many were left out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kernel.errors import RetrievalModelError
from kernel.permissions import fingerprint
from kernel.ports import AnswerCache, ConversationStore, DocumentStore, QueryRewriter, Turn
from retrieval.conversation import context_digest_material, fit, rewrite_request, standalone
from schemas.events import AnswerGenerated, ConversationDeleted, QueryRequested


@dataclass(frozen=True)
class Context:
    """A query's place in its conversation (a standalone query: no conversation, turn 0)."""

    search_query: str
    conversation_id: str | None = None
    owner: str = ""
    #: The conversation's turns before this one (the newest `max_turns`), oldest first.
    history: list[Turn] = field(default_factory=list)
    #: The ones given to the model (the newest that fit the budget).
    kept: list[Turn] = field(default_factory=list)
    dropped: int = 0
    #: Further queries searched with `search_query` and fused with it: the offline rule's follow-up as asked.
    also: tuple[str, ...] = ()

    @property
    def turn(self) -> int:
        return 0 if self.conversation_id is None else len(self.history) + 1

    def digest(self) -> str:
        """What the answer depends on besides question and sources ("" without earlier turns: a first turn's
        answer is any standalone question's)."""
        if not self.history:
            return ""
        return hashlib.sha256("\x1f".join(context_digest_material(self.search_query, self.kept)).encode()).hexdigest()

    def fields(self) -> dict[str, object]:
        """The answer's conversation fields."""
        return {"search_query": self.search_query, "conversation_id": self.conversation_id, "turn": self.turn,
                "dropped_turns": self.dropped}


class Conversations:
    def __init__(self, store: ConversationStore, *, condenser: QueryRewriter | None = None,
                 context_tokens: int = 4_000, on_degraded: Callable[[str, str], None] | None = None) -> None:
        self._store = store
        self._condenser = condenser
        self._budget = context_tokens
        self._on_degraded = on_degraded or (lambda _model, _reason: None)

    def context(self, q: QueryRequested, visible: tuple[str, ...]) -> Context:
        if q.conversation_id is None:
            return Context(search_query=q.text)
        owner = fingerprint(visible)
        history = self._store.turns(q.tenant, q.conversation_id, owner)
        kept, dropped = fit(history, self._budget)
        search_query, also = self._search_query(q.text, history)
        return Context(search_query, q.conversation_id, owner, history, kept, dropped, also)

    def _search_query(self, question: str, history: Sequence[Turn]) -> tuple[str, tuple[str, ...]]:
        """The standalone query, and what else to search with it. The offline rule's query is fused with the
        follow-up as asked: carried terms find the subject, but alone they also pull towards the previous turn's
        own sources (bench/RESULTS.md, "Issue 28")."""
        if not history:
            return question, ()
        if self._condenser is not None:
            try:
                rewritten = self._condenser.rewrite(rewrite_request(question, history, self._budget))
                if rewritten and rewritten[0].strip():
                    return rewritten[0].strip()[:4_000], ()
            except RetrievalModelError as exc:
                self._on_degraded(self._condenser.name, str(exc))
        offline = standalone(question, history)
        return offline, (question,) if offline != question else ()

    def remember(self, q: QueryRequested, ctx: Context, answer: AnswerGenerated, keys: tuple[str, str],
                 log: DocumentStore, cache: AnswerCache | None) -> None:
        """Keep the answered turn (a redelivered query's turn is stored once), with its answer-log and answer-cache
        keys; the tenant's turns that expired meanwhile are deleted, and their answers with them."""
        if ctx.conversation_id is None:
            return
        expired = self._store.add_turn(q.tenant, ctx.conversation_id, ctx.owner, Turn(
            q.query_id, q.text, ctx.search_query, answer.answer, tuple(c.chunk_id for c in answer.citations),
            *keys))
        _erase_answers(q.tenant, expired, log, cache)

    def erase(self, event: ConversationDeleted, log: DocumentStore, cache: AnswerCache | None) -> None:
        """Every owner's turns of the id in the tenant, their logged answers and cached answers. In that order of
        discovery, deleting the turns last: a failure part way leaves the turns to find on the retry."""
        _erase_answers(event.tenant, self._store.stored_turns(event.tenant, event.conversation_id), log, cache)
        self._store.delete(event.tenant, event.conversation_id)


def _erase_answers(tenant: str, turns: Sequence[Turn], log: DocumentStore, cache: AnswerCache | None) -> None:
    if turns:
        log.delete_answers(tenant, [t.log_key for t in turns if t.log_key])
        if cache is not None:
            cache.delete(tenant, [t.cache_key for t in turns if t.cache_key])
