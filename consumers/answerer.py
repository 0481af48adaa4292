"""queries.v1 -> answers.v1 (+ answer-deltas.v1) (at-least-once; exactly one stored answer per query id).

The query id is the idempotency key: the first answer is stored before it is published, and a
redelivered or repeated query republishes the stored answer without retrieving or calling the model
again. Retrieval (retrieval/) embeds the question, runs hybrid search within the query's tenant and
keeps, per document, only the newest version present.

Answers are also cached by prompt version, model, normalised question and retrieved chunk ids (per
tenant), so the same question over the same chunks costs one model call. The cache is a port of its own
(AnswerCache), apart from the answer log: the log's keys are the clients' query ids, any printable text, so no
query id can read or plant a cache entry. (Versions before it kept the cache in the answer log under
`cache:<sha>` query ids; those rows are never served as cache hits any more: docs/operations.md, "Upgrading".)
Degraded answers are never cached: when the model recovers, the next query gets a real answer. Queries of one
batch are answered concurrently (model calls wait on the network) and published in their order.

A query may continue a conversation (`conversation_id`; consumers/conversations.py): it is searched as a standalone
query rewritten from its earlier turns, the model is given those turns as prior messages within a token budget, the
cache key covers that context, and the answered turn is kept for the next. Queries of one conversation in a batch
are answered one after the other, in their order (the others concurrently); a `conversation.deleted` event on the
same topic erases the conversation, its logged and its cached answers.

Every query gets exactly one final answer within its deadline, whatever fails; what fails decides only
whether the answer is generated or extractive (`degraded: true`, with the reason) and whether the stage
pauses (the full table, with what an operator sees and does: docs/operations.md, "Faults"):

- the model overloaded, rate limited, 5xx or too slow: this query extractive; the stage goes on;
- the model refuses this request (HTTP 400, 413, 422: its content): this query extractive; after
  RAGBUS_ANSWERER_MODEL_REFUSALS in a row, as below;
- the model refuses every request (401 key, 402 billing, 403 permissions, 404 model name, an account
  state): every query extractive at once, without calling the model; the stage is *degraded* (`/health`
  503 with the reason, `ragbus_stage_degraded`, `ragbus status`, one rate-limited ERROR line naming the
  setting to fix), probes with one query every RAGBUS_ANSWERER_MODEL_PROBE_S and recovers by itself
  (consumers/model_guard.py);
- a reranker or query rewriter: retrieval goes on without it (counted);
- its document store or vector index (the sink: nothing can be answered without them): the stage
  pauses: retries, then the failure breaker holds the batch uncommitted and probes (engine/delivery.py);
- the query's deadline passed before it could be answered (the stage was paused, or far behind):
  answered late, extractive, degraded, the reason starting "expired:", counted as `expired`. Never dropped:
  the asker may have given up, but whoever correlates the answers topic by query id gets its one final
  answer, marked as what it is.
"""

from __future__ import annotations

import hashlib
import time
import unicodedata
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from infra.ops import tracing
from infra.ops.metrics import Freshness, Metrics
from kernel.errors import AnswerModelError, ConfigurationError, RetryableError
from kernel.permissions import PUBLIC_ONLY, fingerprint, query_tokens
from kernel.ports import AnswerCache, AnswerModel, DocumentStore, GeneratedAnswer, OnDelta, SearchHit
from kernel.stage import Emit, Out, PerEvent, Stage
from retrieval.extractive import ExtractiveAnswerer, citations_from
from retrieval.retriever import Retriever
from schemas.events import AnswerDelta, AnswerGenerated, ConversationDeleted, QueryRequested, Timings, Usage, utcnow
from schemas.stages import ANSWERER
from schemas.topics import TOPICS

from .conversations import Context, Conversations

#: What the answerer reads from queries.v1.
Event = QueryRequested | ConversationDeleted


def normalise(question: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", question).casefold().split()).rstrip("?!. ")


def cache_key(model: AnswerModel, question: str, hits: Sequence[SearchHit], agentic: bool,
              visible: tuple[str, ...] = PUBLIC_ONLY, context: str = "") -> str:
    """What an answer was computed from, and for whom: an answer is reused only for askers who may read exactly
    the same documents (an agentic answer searched more than its citations show), and, in a conversation, only in
    the same context (`context`: the digest of the search query and the earlier turns the model was given)."""
    material = "\x1f".join([model.prompt_version, model.name, str(agentic), normalise(question),
                            fingerprint(visible), *[h.chunk_id for h in hits], *([context] if context else [])])
    return hashlib.sha256(material.encode()).hexdigest()


def log_key(visible: tuple[str, ...], query_id: str) -> str:
    """The query's key in the answer log: its id, with the fingerprint of what the asker may read unless that is
    the documents without an ACL (as before permissions existed). A query id reused by another asker, or asked
    again after the operator denied unlisted documents, is answered afresh, never with an answer computed for
    other readers. (Client query ids are printable, so the separator cannot occur in one.)"""
    return query_id if visible == PUBLIC_ONLY else f"{query_id}\x1f{fingerprint(visible)}"


class Answerer:
    def __init__(self, retriever: Retriever | Callable[[], Retriever], model: AnswerModel, store: DocumentStore,
                 metrics: Metrics, emit: Emit, *, cache: AnswerCache | None, concurrency: int = 8,
                 deny_unlisted: bool = False, conversations: Conversations | None = None) -> None:
        """`cache`: where generated answers are reused (None: every query calls the model). `deny_unlisted`:
        documents without an ACL are readable by no query (RAGBUS_ACL_DENY_UNLISTED). `conversations`: where
        conversations are kept (None: a conversation id is ignored, every query is standalone). `retriever`: one,
        or what returns the serving index generation's (kernel/generations.py), asked once per batch: every query
        of a batch reads that one generation, never a mix."""
        self._deny_unlisted = deny_unlisted
        self._conversations = conversations
        self._serving: Callable[[], Retriever] = retriever if callable(retriever) else (lambda: retriever)
        self._retriever = self._serving()
        self._model = model
        self._store = store
        self._metrics = metrics
        self._emit = emit
        self._cache = cache
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="ragbus-answer")

    def stage(self, max_batch: int, window_s: float) -> Stage[Event]:
        return Stage(ANSWERER, handle=self.handle, on_failure=failed_answer, max_batch=max_batch, window_s=window_s)

    def handle(self, events: Sequence[Event]) -> list[PerEvent]:
        started = utcnow()
        self._retriever = self._serving()  # the batch's pool threads read it; the batch ends before the next
        # Events of one conversation run one after the other in a pool thread, in their order (a turn sees the
        # turns before it); the others concurrently. Each under its own trace span and log fields.
        chains: dict[tuple[str, str], list[int]] = {}
        for i, e in enumerate(events):
            chains.setdefault((e.tenant, e.conversation_id) if e.conversation_id else ("", str(i)), []).append(i)
        slots: dict[int, tuple[Future[list[Any]], int]] = {}
        # bound here, in the runner's thread, where each event's span is known
        runs = [self._bound(e) for e in events]
        for members in chains.values():
            future = self._pool.submit(self._chain, [runs[i] for i in members])
            slots |= {i: (future, n) for n, i in enumerate(members)}
        results: list[PerEvent] = []
        answered: list[tuple[QueryRequested, AnswerGenerated]] = []
        for i, e in enumerate(events):
            future, n = slots[i]
            outcome = future.result()[n]
            if isinstance(outcome, RetryableError | ConfigurationError):
                raise outcome  # about the stage (its store or index down or refusing it), not this event
            if isinstance(outcome, Exception):  # this event's own failure: dead-lettered, the others go on
                results.append(outcome)
            elif isinstance(e, QueryRequested) and isinstance(outcome, AnswerGenerated):
                results.append([Out(TOPICS.answers, e.query_id.encode(), outcome)])
                answered.append((e, outcome))
            else:
                results.append([])  # a conversation erased: nothing to publish
        done = utcnow()  # the batch's answers are published now
        for q, answer in answered:
            if answer.occurred_at >= started:  # made now, not a stored answer replayed for a redelivery
                self._metrics.freshness.labels(Freshness.QUERY).observe(
                    max(0.0, (done - q.occurred_at).total_seconds()))
        return results

    def _bound(self, e: Event) -> Callable[[], Any]:
        """The event's handling, to run in a pool thread under the event's trace span and log fields."""
        if isinstance(e, QueryRequested):
            answer = tracing.for_event(e, self.answer)
            return lambda: answer(e)
        erase = tracing.for_event(e, self.erase)
        return lambda: erase(e)

    @staticmethod
    def _chain(runs: Sequence[Callable[[], Any]]) -> list[Any]:
        """The events' outcomes in order: an answer, None (a conversation erased) or the exception raised. After
        a failure of the stage itself the rest are not run (the batch will be)."""
        out: list[Any] = []
        for run in runs:
            if out and isinstance(out[-1], RetryableError | ConfigurationError):
                out.append(out[-1])
                continue
            try:
                out.append(run())
            except Exception as exc:
                out.append(exc)
        return out

    def erase(self, e: ConversationDeleted) -> None:
        if self._conversations is not None:
            self._conversations.erase(e, self._store, self._cache)

    def answer(self, q: QueryRequested) -> AnswerGenerated:
        visible = query_tokens(q.tenant, q.principals, deny_unlisted=self._deny_unlisted)
        logged = log_key(visible, q.query_id)
        stored = _own(q, self._store.get_answer(q.tenant, logged))
        if stored is not None:
            self._metrics.answers.labels("replayed").inc()
            if self._conversations is not None and q.conversation_id is not None:  # kept once, even after a crash
                self._conversations.remember(q, Context(stored.search_query or q.text, q.conversation_id,
                                                        fingerprint(visible)), stored, (logged, ""), self._store,
                                             self._cache)
            return stored
        started = time.perf_counter()
        remaining_s = q.deadline_ms / 1000 - (utcnow() - q.occurred_at).total_seconds()
        ctx = self._conversations.context(q, visible) if self._conversations is not None else Context(q.text)
        with tracing.span("retrieve", {"ragbus.top_k": q.top_k}) as span:
            hits = self._retriever.retrieve(q.tenant, ctx.search_query, q.top_k, q.filters, visible, also=ctx.also)
            span.set_attribute("ragbus.hits", len(hits))
        self._metrics.acl_queries.labels("principals" if q.principals else "anonymous").inc()
        retrieved = time.perf_counter()
        common: dict[str, Any] = {"tenant": q.tenant, "correlation_id": q.correlation_id or q.query_id,
                                  "query_id": q.query_id, "question": q.text, **ctx.fields()}
        key = ""
        expired = remaining_s <= 0 and not q.retrieve_only
        if q.retrieve_only:
            answer = AnswerGenerated(**common, answer="", degraded=False, retrieve_only=True,
                                     citations=citations_from(hits), timings=_timings(started, retrieved, retrieved))
        elif expired:
            reason = (f"expired: the query's deadline ({q.deadline_ms} ms) passed {-remaining_s:.1f} s before it "
                      "could be answered (the answerer was paused or behind): offline extractive answer")
            gen = ExtractiveAnswerer(reason=reason).answer(ctx.search_query, hits,
                                                           on_delta=self._deltas(q) if q.stream else None)
            answer = _answer_event(common, gen, _timings(started, retrieved, time.perf_counter()))
        else:
            key = cache_key(self._model, q.text, hits, q.agentic, visible, ctx.digest())
            answer = self._generate(q, hits, remaining_s - (retrieved - started), common, (started, retrieved),
                                    visible, ctx, key)
        # the first answer stored wins: another answerer may have answered this query id meanwhile
        answer = _own(q, self._store.put_answer(q.tenant, logged, answer.model_dump_json())) or answer
        if self._conversations is not None:
            self._conversations.remember(q, ctx, answer, (logged, key), self._store, self._cache)
        self._account(answer, expired)
        self._metrics.answer_seconds.observe(time.perf_counter() - started)
        return answer

    def _generate(self, q: QueryRequested, hits: list[SearchHit], remaining_s: float, common: dict[str, Any],
                  clock: tuple[float, float], visible: tuple[str, ...], ctx: Context, key: str) -> AnswerGenerated:
        started, retrieved = clock
        cached = self._cache.get(q.tenant, key) if self._cache is not None else None
        if cached is not None:
            return AnswerGenerated.model_validate_json(cached).model_copy(update=common | {
                "event_id": uuid.uuid4(), "occurred_at": utcnow(), "cached": True, "usage": Usage(),
                "timings": _timings(started, retrieved, time.perf_counter())})
        on_delta = self._deltas(q) if q.stream else None
        try:
            if remaining_s <= 0:
                raise AnswerModelError(f"the query's deadline ({q.deadline_ms} ms) passed during retrieval")
            gen = self._model.answer(q.text, hits, on_delta=on_delta, deadline_s=remaining_s,
                                     search=self._search(q, visible) if q.agentic else None, history=ctx.kept)
        except AnswerModelError as exc:  # ModelRequestError too; the guard turns a ConfigurationError into one
            gen = ExtractiveAnswerer(reason=f"{exc}: offline extractive answer").answer(ctx.search_query, hits,
                                                                                        on_delta=on_delta)
        answer = _answer_event(common, gen, _timings(started, retrieved, time.perf_counter()))
        if self._cache is not None and not answer.degraded:
            self._cache.put(q.tenant, key, answer.model_dump_json())
        return answer

    def _search(self, q: QueryRequested, visible: tuple[str, ...]) -> Callable[[str, int], list[SearchHit]]:
        def search(text: str, k: int) -> list[SearchHit]:  # follow-ups stay in the query's tenant, filters and
            return self._retriever.retrieve(q.tenant, text, k, q.filters, visible)  # permissions
        return search

    def _deltas(self, q: QueryRequested) -> OnDelta:
        seq = iter(range(1_000_000_000))

        def on_delta(text: str) -> None:
            self._emit(Out(TOPICS.answer_deltas, q.query_id.encode(), AnswerDelta(
                tenant=q.tenant, correlation_id=q.correlation_id, query_id=q.query_id, seq=next(seq), text=text)))

        return on_delta

    def _account(self, a: AnswerGenerated, expired: bool) -> None:
        status = ("expired" if expired and a.degraded else "cached" if a.cached
                  else "degraded" if a.degraded else "ok")
        self._metrics.answers.labels(status).inc()
        if a.model and not a.cached:
            for kind, n in (("input", a.usage.input_tokens), ("output", a.usage.output_tokens),
                            ("cache_creation", a.usage.cache_creation_input_tokens),
                            ("cache_read", a.usage.cache_read_input_tokens)):
                if n:
                    self._metrics.llm_tokens.labels(a.model, kind).inc(n)
            if a.usage.cost_usd:
                self._metrics.llm_cost.labels(a.model).inc(a.usage.cost_usd)
        if a.dropped_citations:
            self._metrics.citations_dropped.inc(a.dropped_citations)


def failed_answer(q: Event, exc: Exception) -> list[Out]:
    """A query the answerer could not answer at all (an unexpected error of its own: the query is dead-lettered)
    still gets its one final answer, empty, degraded and with the error, so its asker stops waiting and
    `ragbus dlq replay` can answer it once the cause is fixed. (A conversation deletion that fails is
    dead-lettered only: it has no answer.)"""
    if not isinstance(q, QueryRequested):
        return []
    return [Out(TOPICS.answers, q.query_id.encode(), AnswerGenerated(
        tenant=q.tenant, correlation_id=q.correlation_id or q.query_id, query_id=q.query_id, question=q.text,
        answer="", degraded=True, retrieve_only=q.retrieve_only, citations=[],
        degraded_reason="not answered: the answerer failed on this query and dead-lettered it",
        error=f"{type(exc).__name__}: {exc}"[:500]))]


def _own(q: QueryRequested, stored: str | None) -> AnswerGenerated | None:
    """The answer stored for this query id; None when there is none, or when the row holds another query's
    answer: an answer cache entry of the versions that kept the cache in the answer log under `cache:<sha>` ids,
    never served (docs/operations.md, "Upgrading")."""
    answer = AnswerGenerated.model_validate_json(stored) if stored is not None else None
    return answer if answer is not None and answer.query_id == q.query_id else None


def _answer_event(common: dict[str, Any], gen: GeneratedAnswer, timings: Timings) -> AnswerGenerated:
    return AnswerGenerated(**common, answer=gen.text, degraded=gen.degraded, degraded_reason=gen.degraded_reason,
                           citations=gen.citations, model=gen.model, prompt_version=gen.prompt_version,
                           dropped_citations=gen.dropped_citations, timings=timings, usage=gen.usage)


def _timings(started: float, retrieved: float, done: float) -> Timings:
    return Timings(retrieve_ms=round((retrieved - started) * 1000, 2), generate_ms=round((done - retrieved) * 1000, 2),
                   total_ms=round((done - started) * 1000, 2))
