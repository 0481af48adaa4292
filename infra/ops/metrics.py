"""Prometheus metrics: one object on an injected registry (tests pass a fresh one)."""

from __future__ import annotations

from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Outcome(StrEnum):
    OK = "ok"
    DEAD_LETTERED = "dead_lettered"
    RETRIED = "retried"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter("ragbus_events_total", "Events handled by a stage", ["stage", "status"], registry=r)
        self.rekeyed = Counter("ragbus_events_rekeyed_total",
                               "Events that arrived without the key their topic asks for (ragbus re-keyed their "
                               "outputs)", ["stage"], registry=r)
        self.chunks = Counter("ragbus_chunks_total", "Chunks produced, embedded or indexed", ["stage"], registry=r)
        self.batch_seconds = Histogram("ragbus_batch_seconds", "Time to handle one batch", ["stage"], registry=r,
                                       buckets=(0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.embed_seconds = Histogram("ragbus_embed_seconds", "Model time per embedding batch", registry=r,
                                       buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.embed_cache = Counter("ragbus_embedding_cache_total", "Embedding cache lookups", ["status"],
                                   registry=r)
        self.answers = Counter("ragbus_answers_total", "Final answers published", ["status"], registry=r)
        self.answer_seconds = Histogram("ragbus_answer_seconds", "Query to answer time", registry=r,
                                        buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.llm_tokens = Counter("ragbus_llm_tokens_total", "Language-model tokens", ["model", "kind"],
                                  registry=r)
        self.llm_cost = Counter("ragbus_llm_cost_usd_total", "Estimated language-model cost", ["model"],
                                registry=r)
        self.citations_dropped = Counter("ragbus_citations_dropped_total",
                                         "Citations removed because they named no retrieved chunk", registry=r)
        self.lag = Gauge("ragbus_consumer_lag", "Messages behind the fetch high-water mark",
                         ["stage", "topic", "partition"], registry=r)
        self.stalled = Gauge("ragbus_stage_stalled", "1 when the stage has lag but makes no progress", ["stage"],
                             registry=r)
        self.crashes = Counter("ragbus_stage_crashes_total",
                               "Unexpected exceptions out of a stage's handler (the event is isolated, then "
                               "dead-lettered)", ["stage"], registry=r)
        self.restarts = Counter("ragbus_stage_restarts_total",
                                "Times a stage's agent or consumer loop was restarted in its process", ["stage"],
                                registry=r)
        self.broken = Gauge("ragbus_stage_broken",
                            "1 while the stage's failure breaker is open: it holds its events and probes", ["stage"],
                            registry=r)
        self.last_progress = Gauge("ragbus_last_progress_timestamp_seconds",
                                   "Unix time a stage last finished a batch", ["stage"], registry=r)
