"""queries.v1 -> answers.v1 (+ answer-deltas.v1) (at-least-once; exactly one stored answer per query id).

The query id is the idempotency key: the first answer is stored before it is published, and a
redelivered or repeated query republishes the stored answer without retrieving or calling the model
again. Retrieval embeds the question, runs hybrid search within the query's tenant and keeps, per
document, only the newest version present (old chunks stay searchable while an update is indexed).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from infra.extractive import citations_from
from infra.kafka import EventProducer, SourceRecord
from infra.metrics import Metrics
from infra.ports import AnswerModel, DocumentStore, Embedder, SearchHit, VectorIndex
from infra.settings import RetrievalSettings
from schemas.events import AnswerDelta, AnswerGenerated, QueryRequested, Timings, Usage
from schemas.topics import TOPICS

STAGE = "answerer"


def newest_versions_only(hits: Sequence[SearchHit]) -> list[SearchHit]:
    newest: dict[str, int] = {}
    for h in hits:
        newest[h.document_id] = max(newest.get(h.document_id, -1), h.version)
    return [h for h in hits if h.version == newest[h.document_id]]


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
                 metrics: Metrics) -> None:
        self._retriever = retriever
        self._model = model
        self._store = store
        self._producer = producer
        self._metrics = metrics
        self._pending: list[tuple[SourceRecord, QueryRequested]] = []

    def add(self, event: Any, record: SourceRecord) -> None:
        self._pending.append((record, event))

    def discard(self) -> None:
        self._pending = []

    def flush(self) -> list[tuple[SourceRecord, Any, Exception]]:
        for _, query in self._pending:
            self._publish(self.answer(query))
        self._pending = []
        return []

    def _publish(self, answer: AnswerGenerated) -> None:
        self._producer.send(TOPICS.answers, answer.query_id, answer)

    def answer(self, q: QueryRequested) -> AnswerGenerated:
        stored = self._store.get_answer(q.tenant, q.query_id)
        if stored is not None:
            self._metrics.answers.labels("replayed").inc()
            return AnswerGenerated.model_validate_json(stored)
        started = time.perf_counter()
        hits = self._retriever.retrieve(q.tenant, q.text, q.top_k, dict(q.filters))
        retrieved = time.perf_counter()
        seq = iter(range(1_000_000))

        def on_delta(text: str) -> None:
            if q.stream:
                self._producer.send(TOPICS.answer_deltas, q.query_id, AnswerDelta(
                    tenant=q.tenant, correlation_id=q.correlation_id, query_id=q.query_id, seq=next(seq), text=text))

        common = {"tenant": q.tenant, "correlation_id": q.correlation_id or q.query_id, "query_id": q.query_id,
                  "question": q.text}
        if q.retrieve_only:
            answer = AnswerGenerated(**common, answer="", degraded=False, retrieve_only=True,
                                     citations=citations_from(hits),
                                     timings=_timings(started, retrieved, retrieved))
        else:
            gen = self._model.answer(q.text, hits, on_delta=on_delta, deadline_s=q.deadline_ms / 1000)
            done = time.perf_counter()
            answer = AnswerGenerated(
                **common, answer=gen.text, degraded=gen.degraded, degraded_reason=gen.degraded_reason,
                citations=gen.citations, model=gen.model, prompt_version=gen.prompt_version,
                dropped_citations=gen.dropped_citations, timings=_timings(started, retrieved, done),
                usage=Usage(input_tokens=gen.input_tokens, output_tokens=gen.output_tokens,
                            cache_creation_input_tokens=gen.cache_creation_input_tokens,
                            cache_read_input_tokens=gen.cache_read_input_tokens, cost_usd=gen.cost_usd))
        self._store.put_answer(q.tenant, q.query_id, answer.model_dump_json())
        self._metrics.answers.labels("degraded" if answer.degraded else "ok").inc()
        self._metrics.answer_seconds.observe(time.perf_counter() - started)
        return answer


def _timings(started: float, retrieved: float, done: float) -> Timings:
    return Timings(retrieve_ms=round((retrieved - started) * 1000, 2), generate_ms=round((done - retrieved) * 1000, 2),
                   total_ms=round((done - started) * 1000, 2))
