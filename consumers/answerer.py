"""queries.v1 -> answers.v1 (+ answer-deltas.v1) (at-least-once; exactly one stored answer per query id).

The query id is the idempotency key: the first answer is stored before it is published, and a
redelivered or repeated query republishes the stored answer without retrieving or calling the model
again. Retrieval embeds the question, runs hybrid search within the query's tenant and keeps, per
document, only the newest version present (old chunks stay searchable while an update is indexed).

Answers are also cached by prompt version, model, normalised question and retrieved chunk ids (per
tenant), so the same question over the same chunks costs one model call. Degraded answers are never
cached: when the model recovers, the next query gets a real answer. Queries of one batch are answered
concurrently (model calls wait on the network) and published in their order.
"""

from __future__ import annotations

import hashlib
import time
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from infra.kafka.clients import EventProducer, SourceRecord
from infra.ops.metrics import Metrics
from infra.settings import AnswererSettings, RetrievalSettings
from kernel.ports import AnswerModel, DocumentStore, Embedder, GeneratedAnswer, SearchHit, VectorIndex
from retrieval.extractive import ExtractiveAnswerer, citations_from
from schemas.events import AnswerDelta, AnswerGenerated, QueryRequested, Timings, Usage, utcnow
from schemas.topics import TOPICS

STAGE = "answerer"
CACHE_PREFIX = "cache:"


def newest_versions_only(hits: Sequence[SearchHit]) -> list[SearchHit]:
    newest: dict[str, int] = {}
    for h in hits:
        newest[h.document_id] = max(newest.get(h.document_id, -1), h.version)
    return [h for h in hits if h.version == newest[h.document_id]]


def normalise(question: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", question).casefold().split()).rstrip("?!. ")


def cache_key(model: AnswerModel, question: str, hits: Sequence[SearchHit], agentic: bool) -> str:
    material = "\x1f".join([model.prompt_version, model.name, str(agentic), normalise(question),
                            *[h.chunk_id for h in hits]])
    return CACHE_PREFIX + hashlib.sha256(material.encode()).hexdigest()


class Retriever:
    def __init__(self, embedder: Embedder, index: VectorIndex, settings: RetrievalSettings) -> None:
        self._embedder = embedder
        self._index = index
        self._settings = settings

    def retrieve(self, tenant: str, question: str, top_k: int,
                 filters: dict[str, Any] | None = None) -> list[SearchHit]:
        vector = self._embedder.embed([question])[0]
        hits = self._index.hybrid_search(tenant, question, vector, limit=top_k * 2, alpha=self._settings.alpha,
                                         filters=filters)
        return newest_versions_only(hits)[:top_k]


class AnswererSink:
    def __init__(self, retriever: Retriever, model: AnswerModel, store: DocumentStore, producer: EventProducer,
                 metrics: Metrics, settings: AnswererSettings | None = None) -> None:
        self._retriever = retriever
        self._model = model
        self._store = store
        self._producer = producer
        self._metrics = metrics
        self._settings = settings or AnswererSettings()
        self._pool = ThreadPoolExecutor(self._settings.concurrency, thread_name_prefix="ragbus-answer")
        self._pending: list[tuple[SourceRecord, QueryRequested]] = []

    def add(self, event: Any, record: SourceRecord) -> None:
        self._pending.append((record, event))

    def discard(self) -> None:
        self._pending = []

    def flush(self) -> list[tuple[SourceRecord, Any, Exception]]:
        for answer in self._pool.map(self.answer, [q for _, q in self._pending]):
            self._producer.send(TOPICS.answers, answer.query_id, answer)
        self._pending = []
        return []

    def answer(self, q: QueryRequested) -> AnswerGenerated:
        stored = self._store.get_answer(q.tenant, q.query_id)
        if stored is not None:
            self._metrics.answers.labels("replayed").inc()
            return AnswerGenerated.model_validate_json(stored)
        started = time.perf_counter()
        remaining_s = q.deadline_ms / 1000 - (utcnow() - q.occurred_at).total_seconds()
        hits = self._retriever.retrieve(q.tenant, q.text, q.top_k, dict(q.filters))
        retrieved = time.perf_counter()
        common = {"tenant": q.tenant, "correlation_id": q.correlation_id or q.query_id, "query_id": q.query_id,
                  "question": q.text}
        if q.retrieve_only:
            answer = AnswerGenerated(**common, answer="", degraded=False, retrieve_only=True,
                                     citations=citations_from(hits), timings=_timings(started, retrieved, retrieved))
        else:
            gen, cached = self._generate(q, hits, remaining_s - (retrieved - started))
            answer = _answer_event(common, gen, cached, _timings(started, retrieved, time.perf_counter()))
        self._store.put_answer(q.tenant, q.query_id, answer.model_dump_json())
        first = self._store.get_answer(q.tenant, q.query_id)  # another answerer may have stored one first
        answer = AnswerGenerated.model_validate_json(first) if first else answer
        self._account(answer)
        self._metrics.answer_seconds.observe(time.perf_counter() - started)
        return answer

    def _generate(self, q: QueryRequested, hits: list[SearchHit], remaining_s: float) -> tuple[GeneratedAnswer, bool]:
        key = cache_key(self._model, q.text, hits, q.agentic)
        if self._settings.cache_answers:
            hit = self._store.get_answer(q.tenant, key)
            if hit is not None:
                a = AnswerGenerated.model_validate_json(hit)
                return GeneratedAnswer(a.answer, a.citations, a.model, a.prompt_version, a.degraded,
                                       dropped_citations=a.dropped_citations), True
        if remaining_s <= 0:
            reason = f"the query's deadline ({q.deadline_ms} ms) passed before generation: extractive answer"
            return ExtractiveAnswerer(reason=reason).answer(q.text, hits), False
        def search(text: str, k: int) -> list[SearchHit]:  # follow-ups stay in the query's tenant and filters
            return self._retriever.retrieve(q.tenant, text, k, dict(q.filters))

        gen = self._model.answer(q.text, hits, on_delta=self._delta_sink(q) if q.stream else None,
                                 deadline_s=remaining_s, search=search if q.agentic else None)
        if self._settings.cache_answers and not gen.degraded:
            entry = _answer_event({"tenant": q.tenant, "query_id": "cached", "question": q.text}, gen, False, Timings())
            self._store.put_answer(q.tenant, key, entry.model_dump_json())
        return gen, False

    def _delta_sink(self, q: QueryRequested) -> Any:
        seq = iter(range(1_000_000_000))

        def on_delta(text: str) -> None:
            self._producer.send(TOPICS.answer_deltas, q.query_id, AnswerDelta(
                tenant=q.tenant, correlation_id=q.correlation_id, query_id=q.query_id, seq=next(seq), text=text))

        return on_delta

    def _account(self, a: AnswerGenerated) -> None:
        self._metrics.answers.labels("cached" if a.cached else "degraded" if a.degraded else "ok").inc()
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


def _answer_event(common: dict[str, Any], gen: GeneratedAnswer, cached: bool, timings: Timings) -> AnswerGenerated:
    usage = Usage() if cached else Usage(
        input_tokens=gen.input_tokens, output_tokens=gen.output_tokens,
        cache_creation_input_tokens=gen.cache_creation_input_tokens,
        cache_read_input_tokens=gen.cache_read_input_tokens, cost_usd=gen.cost_usd)
    return AnswerGenerated(**common, answer=gen.text, degraded=gen.degraded, degraded_reason=gen.degraded_reason,
                           citations=gen.citations, model=gen.model, prompt_version=gen.prompt_version,
                           dropped_citations=gen.dropped_citations, cached=cached, timings=timings, usage=usage)


def _timings(started: float, retrieved: float, done: float) -> Timings:
    return Timings(retrieve_ms=round((retrieved - started) * 1000, 2), generate_ms=round((done - retrieved) * 1000, 2),
                   total_ms=round((done - started) * 1000, 2))
