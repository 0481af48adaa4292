"""Prometheus metrics: one object on an injected registry (tests pass a fresh one).

A process exports the families of the stages it runs and no others: every family is declared once here with the
declared stages (schemas/stages.py) that export it, or for every stage, and `Metrics(stages=...)` registers only
those (the others still count, into nothing). docs/operations.md describes each family; a test checks that the
table there, this declaration and a scrape of each stage's process agree.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from enum import StrEnum
from importlib import metadata
from typing import TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.metrics import MetricWrapperBase

from schemas.stages import ANSWERER, EMBEDDER, INDEXER, PIPELINE

#: No `*_created` series: they double the series count and no dashboard or alert of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

M = TypeVar("M", bound=MetricWrapperBase)
#: The families only the answerer exports.
ANSWERING = (ANSWERER.name,)

#: Batch and model-call durations: a busy 2-core machine takes up to ~60 s for a 64-event embedding batch.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300)
#: Event publication to effect: seconds on an idle stack, minutes behind a backlog.
FRESHNESS_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200, 1800,
                     3600)
ANSWER_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120)


class Outcome(StrEnum):
    OK = "ok"
    DEAD_LETTERED = "dead_lettered"
    RETRIED = "retried"


class Freshness(StrEnum):
    """`kind` label of ragbus_freshness_seconds."""

    DOCUMENT = "document"  # DocumentArrived.occurred_at -> all its chunks written to the index and store
    QUERY = "query"  # QueryRequested.occurred_at -> its answer ready to publish
    ACL = "acl"  # DocumentAclChanged.occurred_at -> in force on every index entry of the document


def ragbus_version() -> str:
    try:
        return metadata.version("ragbus")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, stages: Iterable[str] | None = None,
                 revision: str = "unknown") -> None:
        self.registry = registry or CollectorRegistry()
        self.stages = tuple(PIPELINE[s].name for s in stages) if stages is not None else PIPELINE.names()
        self._declared: list[tuple[MetricWrapperBase, tuple[str, ...] | None]] = []
        d = self._declare
        self.build_info = d(None, Gauge, "ragbus_build_info", "Always 1: the ragbus version, commit and Python "
                            "this process runs", ["version", "revision", "python"])
        self.build_info.labels(ragbus_version(), revision, platform.python_version()).set(1)
        self.events = d(None, Counter, "ragbus_events_total", "Events handled by a stage, by outcome",
                        ["stage", "status"])
        self.batch_seconds = d(None, Histogram, "ragbus_batch_seconds",
                               "Time to handle one batch (decode, stage, encode)", ["stage"],
                               buckets=DURATION_BUCKETS)
        self.lag = d(None, Gauge, "ragbus_consumer_lag",
                     "Messages between the committed offset and the fetch high-water mark, per partition",
                     ["stage", "topic", "partition"])
        self.stalled = d(None, Gauge, "ragbus_stage_stalled",
                         "1 while a partition of the stage has lag and its committed offset has not moved for "
                         "longer than the stall bound", ["stage"])
        self.stall_bound = d(None, Gauge, "ragbus_stage_stall_bound_seconds",
                             "The stage's current stall bound (fixed, or derived from its batch durations)",
                             ["stage"])
        self.ready = d(None, Gauge, "ragbus_stage_ready",
                       "1 while the stage is connected to Kafka and has its partition assignment", ["stage"])
        self.broken = d(None, Gauge, "ragbus_stage_broken",
                        "1 while the stage's failure breaker is open: it holds its events and probes", ["stage"])
        self.degraded = d(ANSWERING, Gauge, "ragbus_stage_degraded",
                          "1 while the stage works in a reduced mode: the answerer while its answer model refuses "
                          "every request (queries are answered extractively, degraded)", ["stage"])
        self.crashes = d(None, Counter, "ragbus_stage_crashes_total",
                         "Unexpected exceptions out of a stage's handler (the event is isolated, then dead-lettered)",
                         ["stage"])
        self.restarts = d(None, Counter, "ragbus_stage_restarts_total",
                          "Times a stage's agent or consumer loop was restarted in its process", ["stage"])
        self.cpu_seconds = d(None, Counter, "ragbus_cpu_seconds_total",
                             "CPU seconds of a stage's steps: decode, encode, deliver (produce, flush, commit) and "
                             "upkeep (index maintenance), of the thread doing them; handle, of the whole process "
                             "meanwhile (models and stores compute in thread pools of their own)",
                             ["stage", "step"])
        self.last_progress = d(None, Gauge, "ragbus_last_progress_timestamp_seconds",
                               "Unix time a stage last finished a batch", ["stage"])
        self.rekeyed = d(None, Counter, "ragbus_events_rekeyed_total",
                         "Events that arrived without the key their topic asks for (ragbus re-keyed their "
                         "outputs)", ["stage"])
        self.chunks = d((INDEXER.name,), Counter, "ragbus_chunks_total", "Chunks written by the indexer", ["stage"])
        self.generation_documents = d((INDEXER.name,), Counter, "ragbus_generation_documents_indexed_total",
                                      "Document versions completely indexed into an index generation (a rebuild's "
                                      "progress: kernel/generations.py; `ragbus reindex status` for done/total)",
                                      ["generation"])
        self.serving_generation = d((ANSWERER.name,), Gauge, "ragbus_serving_generation",
                                    "1 for the index generation the answerer's queries read", ["generation"])
        self.embed_seconds = d((EMBEDDER.name,), Histogram, "ragbus_embed_seconds",
                               "Model time per embedding call (cache misses only)", buckets=DURATION_BUCKETS)
        self.embed_cache = d((EMBEDDER.name,), Counter, "ragbus_embedding_cache_total",
                             "Embedding cache lookups by result (hit, miss)", ["status"])
        self.freshness = d((INDEXER.name, ANSWERER.name), Histogram, "ragbus_freshness_seconds",
                           "Seconds from an event's occurred_at to its effect: kind=document, a document event "
                           "to all its chunks searchable; kind=query, a query to its answer; kind=acl, an ACL "
                           "change to in force on every index entry of its document",
                           ["kind"], buckets=FRESHNESS_BUCKETS)
        self.answers = d(ANSWERING, Counter, "ragbus_answers_total",
                         "Final answers published, by kind (ok, degraded, expired, cached, replayed)", ["status"])
        self.answer_seconds = d(ANSWERING, Histogram, "ragbus_answer_seconds",
                                "Answerer time per query, retrieval to stored answer", buckets=ANSWER_BUCKETS)
        self.llm_tokens = d(ANSWERING, Counter, "ragbus_llm_tokens_total",
                            "Language-model tokens by model and kind (input, output, cache_creation, cache_read)",
                            ["model", "kind"])
        self.llm_cost = d(ANSWERING, Counter, "ragbus_llm_cost_usd_total",
                          "Estimated language-model cost in USD", ["model"])
        self.citations_dropped = d(ANSWERING, Counter, "ragbus_citations_dropped_total",
                                   "Citations removed because they named no retrieved chunk")
        self.acl_queries = d(ANSWERING, Counter, "ragbus_acl_filtered_queries_total",
                             "Queries answered under a permission filter, by who asked: principals (the query named "
                             "principals) or anonymous (none: documents without an ACL only, or nothing when "
                             "unlisted documents are denied)", ["asker"])
        self.retrieval_degraded = d(ANSWERING, Counter, "ragbus_retrieval_degraded_total",
                                    "Queries a reranker or query rewriter failed on (retrieved without it)",
                                    ["model"])
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        PlatformCollector(registry=self.registry)  # python_info

    def _declare(self, stages: tuple[str, ...] | None, kind: type[M], name: str, doc: str,
                 labels: Iterable[str] = (), **kw: object) -> M:
        """A family, registered when one of `stages` (None: every stage) runs in this process."""
        metric = kind(name, doc, list(labels), registry=None, **kw)  # type: ignore[arg-type]
        if stages is None or any(s in self.stages for s in stages):
            self.registry.register(metric)
        self._declared.append((metric, stages))
        return metric

    def exported(self) -> list[str]:
        """The ragbus families this process exports, as a scrape names them (counters end in _total;
        a histogram `h` is scraped as h_bucket, h_sum and h_count)."""
        return sorted(family_name(m) for m, stages in self._declared
                      if stages is None or any(s in self.stages for s in stages))


def family_name(metric: MetricWrapperBase) -> str:
    name: str = metric._name
    return f"{name}_total" if metric._type == "counter" else name


def families(stages: Iterable[str] | None = None) -> dict[str, tuple[str, ...]]:
    """Every ragbus family and the stages that export it (for docs and dashboards)."""
    m = Metrics(CollectorRegistry(), PIPELINE.names())
    wanted = set(stages) if stages is not None else set(PIPELINE.names())
    return {family_name(metric): (s if s is not None else PIPELINE.names()) for metric, s in m._declared
            if s is None or wanted & set(s)}
