"""`ragbus worker`: wires each stage to its adapters and runs it: faust stages own their process, consumer stages run as
threads (several may share a process)."""

from __future__ import annotations

import faulthandler
import os
import signal
import threading
from collections.abc import Callable

from chunking.splitter import Chunker
from consumers import answerer, indexer, status
from consumers.model_guard import GuardPolicy, ModelGuard
from engine import consumer_runner, faust_runner
from engine.clients import EventProducer, check_reachable, verify_topics
from engine.delivery import BatchPolicy
from infra.ops import logs, tracing
from infra.ops.endpoints import serve
from infra.ops.health import Health, StallPolicy
from infra.ops.health_file import report
from infra.ops.metrics import Metrics
from infra.settings import Settings
from kernel.errors import ConfigurationError
from kernel.ports import DocumentStore, VectorIndex
from kernel.stage import Out, Stage
from retrieval.retriever import Retriever
from schemas.events import QueryRequested
from schemas.topics import STAGES, TOPICS
from streams import chunker, embedder

from . import wiring

STREAM_STAGES = ("chunker", "embedder")
log = logs.get(__name__)


def _chunker_stage(settings: Settings, metrics: Metrics, health: Health) -> faust_runner.FaustApp:
    from infra.models.embedder import load_tokenizer

    store = wiring.build_store(settings)
    split = Chunker(load_tokenizer(settings.embedder.model), settings.chunker.size_tokens,
                    settings.chunker.overlap_tokens)
    stage = chunker.stage(split, store.get_content, wiring.build_fetcher(settings))
    return faust_runner.build_app(settings, BatchPolicy(settings, stage, metrics, health), metrics, health)


#: Tokens left for the contextual header (title > section path) in front of each chunk.
HEADER_TOKENS = 32


def _embedder_stage(settings: Settings, metrics: Metrics, health: Health) -> faust_runner.FaustApp:
    if settings.embedder.nice and hasattr(os, "nice"):
        os.nice(settings.embedder.nice)  # this process only: the embedder runs alone in its worker process
    model = wiring.passage_embedder(settings, tracing.traced_embedder(wiring.build_embedder(settings)))
    limit = getattr(model, "max_tokens", 0)
    if limit and settings.chunker.size_tokens + HEADER_TOKENS > limit:
        raise ConfigurationError(
            f"RAGBUS_CHUNK_SIZE_TOKENS={settings.chunker.size_tokens} plus a {HEADER_TOKENS}-token header exceeds "
            f"{settings.embedder.model}'s {limit}-token input: chunks would be truncated; lower the chunk size")
    cached = embedder.CachedEmbedder(model, wiring.build_cache(settings), metrics)
    stage = embedder.stage(cached, settings.embedder.max_batch_events, settings.embedder.batch_window_s)
    return faust_runner.build_app(settings, BatchPolicy(settings, stage, metrics, health), metrics, health)


#: Work a stage process does in its own thread beside its batches, until the stop event is set.
Upkeep = Callable[[threading.Event], None]


def maintain_forever(index: VectorIndex, every_s: float) -> Upkeep:
    """The indexer process keeps its vector index in shape in a thread of its own (LanceDB's optimize and
    the ANN build): a write, its commit and the searches never wait for it."""
    def run(stop: threading.Event) -> None:
        failures = 0
        while not stop.wait(every_s):
            try:
                index.maintain()
                failures = 0
            except Exception as exc:  # searches stay correct (new rows are scanned); the next run retries
                failures += 1
                (log.error if failures >= 3 else log.warning)(
                    "index maintenance failed; retrying at the next run", failures=failures, error=repr(exc)[:300])
    return run


def guarded_model(settings: Settings, metrics: Metrics, health: Health | None) -> ModelGuard:
    """The answer model behind its guard (consumers/model_guard.py), reporting to the stage's health and
    metrics; its start-up check runs here, and a refusal starts the answerer degraded instead of stopping it."""
    def report(reason: str | None) -> None:
        if health is not None:
            health.degraded(reason)
        else:
            metrics.degraded.labels(answerer.STAGE).set(0 if reason is None else 1)

    a = settings.answerer
    guard = ModelGuard(wiring.build_answer_model(settings), report,
                       GuardPolicy(probe_s=a.model_probe_s, probe_max_s=a.model_probe_max_s, refusals=a.model_refusals))
    guard.check()
    return guard


def consumer(settings: Settings, name: str, metrics: Metrics, health: Health | None = None,
             upkeep: list[Upkeep] | None = None) -> consumer_runner.ConsumerRunner:
    """A consumer stage wired to its adapters; its runner owns the producer and the commits. Background
    work the stage needs (the indexer's index maintenance) is appended to `upkeep`."""
    # The answerer's deltas are sent one by one as the model's tokens arrive and nothing flushes them:
    # no linger, so each leaves at once (batch outputs are flushed before the commit either way).
    producer = EventProducer(settings, **({"linger.ms": 0} if name == "answerer" else {}))
    store = wiring.build_store(settings)
    batch, window = settings.kafka.poll_batch, settings.kafka.batch_linger_s
    if name == "status":
        policy = BatchPolicy(settings, status.stage(store, batch, window), metrics, health)
    else:
        from infra.models.embedder import embedding_dim

        dim = embedding_dim(settings.embedder.model)
        index = wiring.build_index(settings, dim)
        if name == "indexer":
            policy = BatchPolicy(settings, indexer.Indexer(index, store, metrics, dim).stage(batch, window), metrics,
                                 health)
            if upkeep is not None:
                upkeep.append(maintain_forever(index, settings.index.maintain_every_s))
        else:
            policy = BatchPolicy(settings, _answerer(settings, metrics, producer, store, index, health), metrics,
                                 health)
    return consumer_runner.ConsumerRunner(settings, policy, producer, health)


def _answerer(settings: Settings, metrics: Metrics, producer: EventProducer, store: DocumentStore,
              index: VectorIndex, health: Health | None) -> Stage[QueryRequested]:
    questions = wiring.query_embedder(settings, tracing.traced_embedder(wiring.build_embedder(settings)))
    retriever = Retriever(questions, index, wiring.retrieval_config(settings),
                          reranker=wiring.build_reranker(settings), rewriter=wiring.build_rewriter(settings),
                          on_degraded=lambda model, reason: metrics.retrieval_degraded.labels(model).inc())

    def emit(out: Out) -> None:  # streamed deltas go out at once, ahead of the batch's commit
        producer.send(out.topic, out.key, out.event)

    # No linger for queries: a lone query is answered at once, and queries that arrive together
    # still form one batch (answered concurrently) because they are in the queue already.
    return answerer.Answerer(retriever, guarded_model(settings, metrics, health), store, metrics, emit,
                             concurrency=settings.answerer.concurrency,
                             cache_answers=settings.answerer.cache_answers).stage(settings.kafka.poll_batch, 0.0)


def run_workers(settings: Settings, names: list[str]) -> None:
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise ConfigurationError(f"unknown stage {unknown[0]!r}: choose from {', '.join(STAGES)}")
    streams = [n for n in names if n in STREAM_STAGES]
    if streams and len(names) > 1:
        raise ConfigurationError(f"{streams[0]} is a faust stage and runs alone: `ragbus worker {streams[0]}`")
    metrics = Metrics(stages=names, revision=settings.build_revision)  # only the families of these stages
    healths = {n: Health(n, metrics, settings.health_dir(), StallPolicy.of(settings)) for n in names}
    server = serve(settings.metrics_host, settings.metrics_port, metrics, list(healths.values()))
    report(list(healths.values()))  # the health files `ragbus status` reads, refreshed every 2 s
    log.info("stage process starting", stages=",".join(names), pid=os.getpid(),
             metrics=f"http://{settings.metrics_host}:{settings.metrics_port}" if server else "off")
    check_reachable(settings)
    verify_topics(settings, [TOPICS.source_of(n) for n in names])
    tracing.configure(settings, f"ragbus-{'+'.join(names)}")
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` dumps every thread's stack to the log
    if streams:
        build: Callable[[Settings, Metrics, Health], faust_runner.FaustApp] = (
            _chunker_stage if streams[0] == "chunker" else _embedder_stage)
        try:
            faust_runner.run(build(settings, metrics, healths[streams[0]]), settings)
        finally:
            healths[streams[0]].remove()
        return
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    upkeep: list[Upkeep] = []
    runners = [consumer(settings, n, metrics, healths[n], upkeep) for n in names]
    errors: list[BaseException] = []

    def guard(fn: Callable[[threading.Event], None]) -> Callable[[threading.Event], None]:
        def run(ev: threading.Event) -> None:
            try:
                fn(ev)
            except BaseException as exc:
                errors.append(exc)
                log.error("stage crashed", error=repr(exc))
                ev.set()
        return run

    threads = [threading.Thread(target=guard(r.run), args=(stop,), name=f"ragbus-{n}")
               for r, n in zip(runners, names, strict=True)]
    for t in threads:
        t.start()
    for i, work in enumerate(upkeep):  # daemons: they hold no batch, and stop at the next wake-up
        threading.Thread(target=work, args=(stop,), name=f"ragbus-upkeep-{i}", daemon=True).start()
    while any(t.is_alive() for t in threads):  # short joins: the main thread stays free to take signals
        for t in threads:
            t.join(0.2)
    if errors:
        raise errors[0]
