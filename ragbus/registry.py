"""The stage registry, its composition half: the factory that builds each declared stage (schemas/stages.py)
from the settings, bound to its declaration with `@registers`.

A factory gets what the process running the stage provides (`Context`) and returns the `Stage`; `ragbus worker`
(ragbus/worker.py) runs it on the runtime its declaration names. Every declared stage has exactly one factory
(`check`, which `ragbus worker` runs first and tests/unit/test_registry.py runs too), and the stage a factory
builds must be the one it is bound to. Adding a stage: its declaration in schemas/stages.py, its function in
streams/ or consumers/, and one factory here.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from chunking.splitter import Chunker
from consumers import answerer, indexer, status
from consumers.conversations import Conversations
from consumers.model_guard import GuardPolicy, ModelGuard
from engine.clients import ConfigValue
from infra.ops import logs, tracing
from infra.ops.health import Health
from infra.ops.metrics import Metrics
from infra.settings import Settings
from kernel.errors import ConfigurationError
from kernel.ports import VectorIndex
from kernel.stage import Emit, Stage
from retrieval.retriever import Retriever
from schemas.events import (
    ChunksProduced,
    DocumentAclChanged,
    DocumentArrived,
    DocumentDeleted,
    DocumentStatus,
)
from schemas.stages import ANSWERER, CHUNKER, EMBEDDER, INDEXER, PIPELINE, STATUS, StageSpec
from streams import chunker, embedder

from . import wiring

log = logs.get(__name__)
#: Work a stage process does in its own thread beside its batches, until the stop event is set.
Upkeep = Callable[[threading.Event], None]


@dataclass
class Context:
    """What the process running a stage gives its factory."""

    settings: Settings
    metrics: Metrics
    health: Health | None
    #: Publishes at once, ahead of the batch's commit (the answerer's streamed deltas).
    emit: Emit
    #: Work the factory asks the process to run beside the batches (the indexer's index upkeep).
    upkeep: list[Upkeep] = field(default_factory=list)


Factory = Callable[[Context], Stage[Any]]
F = TypeVar("F", bound=Factory)


@dataclass(frozen=True)
class Registration:
    spec: StageSpec
    build: Factory
    #: Producer settings of the stage's runtime beyond the defaults.
    producer: Mapping[str, ConfigValue] = field(default_factory=dict)


REGISTRY: dict[str, Registration] = {}


def registers(spec: StageSpec, **producer: ConfigValue) -> Callable[[F], F]:
    """Binds a factory to the stage declaration `spec`."""
    def bind(build: F) -> F:
        if spec.name in REGISTRY:
            raise ValueError(f"the {spec.name} stage has two factories")
        REGISTRY[spec.name] = Registration(spec, build, producer)
        return build
    return bind


def check() -> None:
    """Every declared stage has a factory, and every factory a declaration."""
    missing = [n for n in PIPELINE.names() if n not in REGISTRY]
    unknown = [n for n, r in REGISTRY.items() if not PIPELINE.declares(r.spec)]
    if missing or unknown:
        raise ConfigurationError(f"the stage registry is incomplete: no factory for {missing or 'none'}, no "
                                 f"declaration for {unknown or 'none'} (schemas/stages.py, ragbus/registry.py)")


def build(name: str, ctx: Context) -> Stage[Any]:
    """The declared stage `name`, built by its factory."""
    registration = REGISTRY[PIPELINE[name].name]
    stage = registration.build(ctx)
    if stage.spec is not registration.spec:
        raise ConfigurationError(f"the factory of the {name} stage built the {stage.name} stage")
    return stage


@registers(CHUNKER)
def build_chunker(ctx: Context) -> Stage[DocumentArrived | DocumentDeleted | DocumentAclChanged]:
    from infra.models.embedder import load_tokenizer  # the tokenizer, in the chunker's process only

    s = ctx.settings
    split = Chunker(load_tokenizer(s.embedder.model), s.chunker.size_tokens, s.chunker.overlap_tokens)
    return chunker.stage(split, wiring.build_store(s).get_content, wiring.build_fetcher(s))


#: Tokens left for the contextual header (title > section path) in front of each chunk.
HEADER_TOKENS = 32


@registers(EMBEDDER)
def build_embedder(ctx: Context) -> Stage[ChunksProduced | DocumentDeleted | DocumentAclChanged]:
    s = ctx.settings
    if s.embedder.nice and hasattr(os, "nice"):
        os.nice(s.embedder.nice)  # this process only: the embedder runs alone in its worker process
    model = wiring.passage_embedder(s, tracing.traced_embedder(wiring.build_embedder(s)))
    limit = getattr(model, "max_tokens", 0)
    if limit and s.chunker.size_tokens + HEADER_TOKENS > limit:
        raise ConfigurationError(
            f"RAGBUS_CHUNK_SIZE_TOKENS={s.chunker.size_tokens} plus a {HEADER_TOKENS}-token header exceeds "
            f"{s.embedder.model}'s {limit}-token input: chunks would be truncated; lower the chunk size")
    cached = embedder.CachedEmbedder(model, wiring.build_cache(s), ctx.metrics)
    return embedder.stage(cached, s.embedder.max_batch_events, s.embedder.batch_window_s)


def _index(settings: Settings) -> tuple[VectorIndex, int]:
    from infra.models.embedder import embedding_dim

    dim = embedding_dim(settings.embedder.model)
    return wiring.build_index(settings, dim), dim


@registers(INDEXER)
def build_indexer(ctx: Context) -> Stage[indexer.Event]:
    s = ctx.settings
    index, dim = _index(s)
    ctx.upkeep.append(maintain_forever(index, s.index.maintain_every_s,
                                       ctx.metrics.cpu_seconds.labels(INDEXER.name, "upkeep").inc))
    return indexer.Indexer(index, wiring.build_store(s), ctx.metrics, dim).stage(s.kafka.poll_batch,
                                                                                  s.kafka.batch_linger_s)


@registers(STATUS)
def build_status(ctx: Context) -> Stage[DocumentStatus]:
    s = ctx.settings
    return status.stage(wiring.build_store(s), s.kafka.poll_batch, s.kafka.batch_linger_s)


# The answerer's deltas are sent one by one as the model's tokens arrive and nothing flushes them: no linger,
# so each leaves at once (batch outputs are flushed before the commit either way).
@registers(ANSWERER, **{"linger.ms": 0})
def build_answerer(ctx: Context) -> Stage[answerer.Event]:
    s, metrics = ctx.settings, ctx.metrics
    index, _ = _index(s)
    questions = wiring.query_embedder(s, tracing.traced_embedder(wiring.build_embedder(s)))
    def degraded(model: str, _reason: str) -> None:
        metrics.retrieval_degraded.labels(model).inc()

    retriever = Retriever(questions, index, wiring.retrieval_config(s),
                          reranker=wiring.build_reranker(s), rewriter=wiring.build_rewriter(s), on_degraded=degraded)
    conversations = Conversations(wiring.build_conversations(s), condenser=wiring.build_condenser(s),
                                  context_tokens=s.conversation.context_tokens, on_degraded=degraded)
    # No linger for queries: a lone query is answered at once, and queries that arrive together
    # still form one batch (answered concurrently) because they are in the queue already.
    return answerer.Answerer(retriever, guarded_model(s, metrics, ctx.health), wiring.build_store(s), metrics,
                             ctx.emit, concurrency=s.answerer.concurrency, deny_unlisted=s.acl.deny_unlisted,
                             cache=wiring.build_answer_cache(s) if s.answerer.cache_answers else None,
                             conversations=conversations).stage(s.kafka.poll_batch, 0.0)


def guarded_model(settings: Settings, metrics: Metrics, health: Health | None) -> ModelGuard:
    """The answer model behind its guard (consumers/model_guard.py), reporting to the stage's health and
    metrics; its start-up check runs here, and a refusal starts the answerer degraded instead of stopping it."""
    def report(reason: str | None) -> None:
        if health is not None:
            health.degraded(reason)
        else:
            metrics.degraded.labels(ANSWERER.name).set(0 if reason is None else 1)

    a = settings.answerer
    guard = ModelGuard(wiring.build_answer_model(settings), report,
                       GuardPolicy(probe_s=a.model_probe_s, probe_max_s=a.model_probe_max_s, refusals=a.model_refusals))
    guard.check()
    return guard


def maintain_forever(index: VectorIndex, every_s: float, cpu: Callable[[float], None] = lambda _: None) -> Upkeep:
    """The indexer process keeps its vector index in shape in a thread of its own (LanceDB's optimize and
    the ANN build): a write, its commit and the searches never wait for it. `cpu` is told the thread's CPU
    seconds of each run."""
    def run(stop: threading.Event) -> None:
        failures = 0
        while not stop.wait(every_s):
            started = time.thread_time()
            try:
                index.maintain()
                failures = 0
            except Exception as exc:  # searches stay correct (new rows are scanned); the next run retries
                failures += 1
                (log.error if failures >= 3 else log.warning)(
                    "index maintenance failed; retrying at the next run", failures=failures, error=repr(exc)[:300])
            finally:
                cpu(time.thread_time() - started)
    return run
