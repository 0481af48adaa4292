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
from kernel.generations import Generation, Lanes, recorded
from kernel.ports import Embedder, VectorIndex
from kernel.stage import Emit, Stage
from retrieval.retriever import Retriever
from schemas.events import DocumentStatus
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
T = TypeVar("T")


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


def _lanes(ctx: Context, stage: str, open_: Callable[[Generation, Settings], T],
           close: Callable[[T], None] = lambda _: None, refresh_s: float = 0.0) -> Lanes[T]:
    """The live index generations (kernel/generations.py) as this stage sees them, each opened with the settings
    it was built with; at start-up, a configured model or chunking that differs from the serving one's is said."""
    s = ctx.settings
    lanes = Lanes(recorded(wiring.build_store(s), wiring.build_of(s)),
                  lambda g: open_(g, wiring.for_generation(s, g.build)), close, refresh_s)
    wiring.notice_differences(s, lanes.refresh(), stage)
    return lanes


@registers(CHUNKER)
def build_chunker(ctx: Context) -> Stage[chunker.Event]:
    from infra.models.embedder import load_tokenizer  # the tokenizer, in the chunker's process only

    store = wiring.build_store(ctx.settings)
    lanes = _lanes(ctx, CHUNKER.name, lambda _, s: Chunker(load_tokenizer(s.embedder.model), s.chunker.size_tokens,
                                                           s.chunker.overlap_tokens))
    return chunker.stage(lanes, store.get_content, wiring.build_fetcher(ctx.settings), keep=store.put_content)


#: Tokens left for the contextual header (title > section path) in front of each chunk.
HEADER_TOKENS = 32


def check_chunk_size(s: Settings, model: Embedder) -> None:
    limit = getattr(model, "max_tokens", 0)
    if limit and s.chunker.size_tokens + HEADER_TOKENS > limit:
        raise ConfigurationError(
            f"RAGBUS_CHUNK_SIZE_TOKENS={s.chunker.size_tokens} plus a {HEADER_TOKENS}-token header exceeds "
            f"{s.embedder.model}'s {limit}-token input: chunks would be truncated; lower the chunk size")


@registers(EMBEDDER)
def build_embedder(ctx: Context) -> Stage[embedder.Event]:
    s = ctx.settings
    if s.embedder.nice and hasattr(os, "nice"):
        os.nice(s.embedder.nice)  # this process only: the embedder runs alone in its worker process
    models: dict[tuple[str, str], embedder.CachedEmbedder] = {}  # generations with one model share it

    def open_(_: Generation, gs: Settings) -> embedder.CachedEmbedder:
        key = (gs.embedder.model, gs.embedder.passage_prefix)
        if key not in models:
            model = wiring.passage_embedder(gs, tracing.traced_embedder(wiring.build_embedder(gs)))
            check_chunk_size(gs, model)
            models[key] = embedder.CachedEmbedder(model, wiring.build_cache(s), ctx.metrics)
        return models[key]

    return embedder.stage(_lanes(ctx, EMBEDDER.name, open_), s.embedder.max_batch_events, s.embedder.batch_window_s,
                          s.embedder.slice_bytes)


def _index(settings: Settings, generation: Generation | None = None) -> tuple[VectorIndex, int]:
    from infra.models.embedder import embedding_dim

    dim = embedding_dim(settings.embedder.model)
    if generation is None:
        return wiring.build_index(settings, dim), dim
    return wiring.build_index(settings, dim, generation.name, generation.build), dim


@registers(INDEXER)
def build_indexer(ctx: Context) -> Stage[indexer.Event]:
    s = ctx.settings

    def open_(g: Generation, gs: Settings) -> indexer.Lane:
        index, dim = _index(gs, g)
        return indexer.Lane(index, dim)

    lanes = _lanes(ctx, INDEXER.name, open_, lambda lane: lane.index.close())
    ctx.upkeep.append(maintain_forever(lambda: [lane.index for lane in lanes.opened()], s.index.maintain_every_s,
                                       ctx.metrics.cpu_seconds.labels(INDEXER.name, "upkeep").inc))
    return indexer.Indexer(lanes, wiring.build_store(s), ctx.metrics).stage(s.kafka.poll_batch, s.kafka.batch_linger_s)


@registers(STATUS)
def build_status(ctx: Context) -> Stage[DocumentStatus]:
    s = ctx.settings
    return status.stage(wiring.build_store(s), s.kafka.poll_batch, s.kafka.batch_linger_s)


#: How often the answerer looks for a switch of the serving generation: a switch serves within this.
SERVING_REFRESH_S = 0.5


# The answerer's deltas are sent one by one as the model's tokens arrive and nothing flushes them: no linger,
# so each leaves at once (batch outputs are flushed before the commit either way).
@registers(ANSWERER, **{"linger.ms": 0})
def build_answerer(ctx: Context) -> Stage[answerer.Event]:
    s, metrics = ctx.settings, ctx.metrics

    def degraded(model: str, _reason: str) -> None:
        metrics.retrieval_degraded.labels(model).inc()

    def open_(g: Generation, gs: Settings) -> tuple[Retriever, VectorIndex]:
        index, _ = _index(gs, g)
        questions = wiring.query_embedder(gs, tracing.traced_embedder(wiring.build_embedder(gs)))
        return Retriever(questions, index, wiring.retrieval_config(s), reranker=wiring.build_reranker(s),
                         rewriter=wiring.build_rewriter(s), on_degraded=degraded), index

    lanes = _lanes(ctx, ANSWERER.name, open_, lambda lane: lane[1].close(), refresh_s=SERVING_REFRESH_S)

    unwarmed: set[str] = set()

    def serving() -> Retriever:
        generation, (retriever, _) = lanes.serving()
        # the other live generations opened too (index, query model), so a switch or a rollback serves at once
        # instead of a first batch waiting for a model to load; one that fails to open is tried at the switch,
        # never at the cost of the queries the serving one answers now
        for other in lanes.refresh():
            if other.name != generation.name and other.name not in unwarmed:
                try:
                    lanes.get(other.name)
                except Exception as exc:
                    unwarmed.add(other.name)
                    log.warning("could not open a live index generation ahead of a switch", generation=other.name,
                                error=f"{type(exc).__name__}: {exc}"[:300])
        metrics.serving_generation.clear()
        metrics.serving_generation.labels(generation.name).set(1)
        return retriever

    conversations = Conversations(wiring.build_conversations(s), condenser=wiring.build_condenser(s),
                                  context_tokens=s.conversation.context_tokens, on_degraded=degraded)
    # No linger for queries: a lone query is answered at once, and queries that arrive together
    # still form one batch (answered concurrently) because they are in the queue already.
    return answerer.Answerer(serving, guarded_model(s, metrics, ctx.health), wiring.build_store(s), metrics,
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


def maintain_forever(indexes: Callable[[], list[VectorIndex]], every_s: float,
                     cpu: Callable[[float], None] = lambda _: None) -> Upkeep:
    """The indexer process keeps its vector index in shape in a thread of its own (LanceDB's optimize and
    the ANN build): a write, its commit and the searches never wait for it. `cpu` is told the thread's CPU
    seconds of each run."""
    def run(stop: threading.Event) -> None:
        failures = 0
        while not stop.wait(every_s):
            started = time.thread_time()
            try:
                for index in indexes():  # every live generation's
                    index.maintain()
                failures = 0
            except Exception as exc:  # searches stay correct (new rows are scanned); the next run retries
                failures += 1
                (log.error if failures >= 3 else log.warning)(
                    "index maintenance failed; retrying at the next run", failures=failures, error=repr(exc)[:300])
            finally:
                cpu(time.thread_time() - started)
    return run
