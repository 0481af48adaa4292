"""Wires each stage to its adapters and runs it: faust stages own their process, consumer stages run as
threads (several may share a process)."""

from __future__ import annotations

import faulthandler
import signal
import threading
from collections.abc import Callable

from chunking.splitter import Chunker
from consumers import answerer, indexer, status
from infra import wiring
from infra.kafka import consumer_runner, faust_runner
from infra.kafka.clients import EventProducer, check_reachable
from infra.ops import logs
from infra.ops.health import Health, serve
from infra.ops.metrics import Metrics
from infra.settings import Settings
from kernel.errors import ConfigurationError
from schemas.topics import STAGES, TOPICS
from streams import chunker
from streams import embedder as embedding

STREAM_STAGES = ("chunker", "embedder")
CONSUMER_STAGES = ("indexer", "status", "answerer")
log = logs.get(__name__)


def _chunker_stage(settings: Settings, metrics: Metrics, health: Health) -> faust_runner.FaustApp:
    from infra.models.embedder import load_tokenizer

    store = wiring.build_store(settings)
    split = Chunker(load_tokenizer(settings.embedder.model), settings.chunker.size_tokens,
                    settings.chunker.overlap_tokens)
    return faust_runner.build_app(settings, chunker.stage(split, store.get_content), metrics, health)


#: Tokens left for the contextual header (title > section path) in front of each chunk.
HEADER_TOKENS = 32


def _embedder_stage(settings: Settings, metrics: Metrics, health: Health) -> faust_runner.FaustApp:
    model = wiring.build_embedder(settings)
    limit = getattr(model, "max_tokens", 0)
    if limit and settings.chunker.size_tokens + HEADER_TOKENS > limit:
        raise ConfigurationError(
            f"RAGBUS_CHUNK_SIZE_TOKENS={settings.chunker.size_tokens} plus a {HEADER_TOKENS}-token header exceeds "
            f"{settings.embedder.model}'s {limit}-token input: chunks would be truncated; lower the chunk size")
    cached = embedding.CachedEmbedder(model, wiring.build_cache(settings), metrics)
    return faust_runner.build_app(
        settings, embedding.stage(cached, settings.embedder.max_batch_events, settings.embedder.batch_window_s),
        metrics, health)


def consumer(settings: Settings, name: str, metrics: Metrics, health: Health | None = None
             ) -> consumer_runner.ConsumerRunner:
    producer = EventProducer(settings)
    store = wiring.build_store(settings)
    if name == "status":
        return consumer_runner.ConsumerRunner(settings, name, TOPICS.status, status.StatusSink(store), metrics,
                                              producer, health)
    from infra.models.embedder import embedding_dim

    dim = embedding_dim(settings.embedder.model)
    index = wiring.build_index(settings, dim)
    if name == "indexer":
        sink: consumer_runner.Sink = indexer.IndexerSink(index, store, producer, metrics, dim)
        return consumer_runner.ConsumerRunner(settings, name, TOPICS.embedded, sink, metrics, producer, health)
    embedder = wiring.build_embedder(settings)
    retriever = answerer.Retriever(embedder, index, settings.retrieval)
    sink = answerer.AnswererSink(retriever, wiring.build_answer_model(settings), store, producer, metrics,
                                 settings.answerer)
    return consumer_runner.ConsumerRunner(settings, name, TOPICS.queries, sink, metrics, producer, health)


def run_workers(settings: Settings, names: list[str]) -> None:
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise ConfigurationError(f"unknown stage {unknown[0]!r}: choose from {', '.join(STAGES)}")
    streams = [n for n in names if n in STREAM_STAGES]
    if streams and len(names) > 1:
        raise ConfigurationError(f"{streams[0]} is a faust stage and runs alone: `ragbus worker {streams[0]}`")
    check_reachable(settings)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` dumps every thread's stack to the log
    metrics = Metrics()
    healths = {n: Health(n, metrics, settings.health_dir(), settings.stall_after_s) for n in names}
    serve(settings.metrics_port, metrics, list(healths.values()))
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
    runners = [consumer(settings, n, metrics, healths[n]) for n in names]
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
    while any(t.is_alive() for t in threads):  # short joins: the main thread stays free to take signals
        for t in threads:
            t.join(0.2)
    if errors:
        raise errors[0]
