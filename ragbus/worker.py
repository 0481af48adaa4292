"""`ragbus worker`: runs declared stages (schemas/stages.py), each built by its factory (ragbus/registry.py), on
the runtime its declaration names: a faust stage owns its process, consumer stages run as threads (several may
share a process)."""

from __future__ import annotations

import faulthandler
import os
import signal
import threading
from collections.abc import Callable, Sequence

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
from kernel.stage import Out
from schemas.stages import PIPELINE, Runtime, StageSpec

from . import registry
from .registry import Context, Upkeep

log = logs.get(__name__)


def run_workers(settings: Settings, names: list[str]) -> None:
    specs = _declared(names)
    registry.check()
    metrics = Metrics(stages=names, revision=settings.build_revision)  # only the families of these stages
    healths = {n: Health(n, metrics, settings.health_dir(), StallPolicy.of(settings)) for n in names}
    server = serve(settings.metrics_host, settings.metrics_port, metrics, list(healths.values()))
    report(list(healths.values()))  # the health files `ragbus status` reads, refreshed every 2 s
    log.info("stage process starting", stages=",".join(names), pid=os.getpid(),
             metrics=f"http://{settings.metrics_host}:{settings.metrics_port}" if server else "off")
    check_reachable(settings)
    verify_topics(settings, [s.reads for s in specs])
    tracing.configure(settings, f"ragbus-{'+'.join(names)}")
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` dumps every thread's stack to the log
    if specs[0].runtime is Runtime.FAUST:
        _run_faust(settings, specs[0], metrics, healths[specs[0].name])
    else:
        _run_consumers(settings, specs, metrics, healths)


def _declared(names: Sequence[str]) -> list[StageSpec]:
    """The declarations of the stages asked for; a faust stage runs alone."""
    try:
        specs = [PIPELINE[n] for n in names]
    except KeyError as exc:
        raise ConfigurationError(exc.args[0]) from None
    faust = [s.name for s in specs if s.runtime is Runtime.FAUST]
    if faust and len(specs) > 1:
        raise ConfigurationError(f"{faust[0]} is a faust stage and runs alone: `ragbus worker {faust[0]}`")
    return specs


def _publishes_nothing_at_once(spec: StageSpec) -> Callable[[Out], None]:
    def emit(out: Out) -> None:
        raise ConfigurationError(f"the {spec.name} stage runs on faust, whose stages publish their outputs only: "
                                 "declare it a confluent-kafka stage to publish at once")
    return emit


def _run_faust(settings: Settings, spec: StageSpec, metrics: Metrics, health: Health) -> None:
    ctx = Context(settings, metrics, health, _publishes_nothing_at_once(spec))
    app = faust_runner.build_app(settings, BatchPolicy(settings, registry.build(spec.name, ctx), metrics, health),
                                 metrics, health)
    _start_upkeep(ctx.upkeep, threading.Event())
    try:
        faust_runner.run(app, settings)
    finally:
        health.remove()


def consumer(settings: Settings, name: str, metrics: Metrics, health: Health | None = None,
             upkeep: list[Upkeep] | None = None) -> consumer_runner.ConsumerRunner:
    """A consumer stage built by its factory; its runner owns the producer and the commits. Background work the
    stage needs (the indexer's index maintenance) is appended to `upkeep`."""
    producer = EventProducer(settings, **registry.REGISTRY[name].producer)
    spec = PIPELINE[name]

    def emit(out: Out) -> None:  # streamed deltas go out at once, ahead of the batch's commit
        spec.check_writes(out.topic)
        producer.send(out.topic, out.key, out.event)

    ctx = Context(settings, metrics, health, emit)
    stage = registry.build(name, ctx)
    if upkeep is not None:
        upkeep.extend(ctx.upkeep)
    return consumer_runner.ConsumerRunner(settings, BatchPolicy(settings, stage, metrics, health), producer, health)


def _run_consumers(settings: Settings, specs: list[StageSpec], metrics: Metrics, healths: dict[str, Health]) -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    upkeep: list[Upkeep] = []
    runners = [consumer(settings, s.name, metrics, healths[s.name], upkeep) for s in specs]
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

    threads = [threading.Thread(target=guard(r.run), args=(stop,), name=f"ragbus-{s.name}")
               for r, s in zip(runners, specs, strict=True)]
    for t in threads:
        t.start()
    _start_upkeep(upkeep, stop)
    while any(t.is_alive() for t in threads):  # short joins: the main thread stays free to take signals
        for t in threads:
            t.join(0.2)
    if errors:
        raise errors[0]


def _start_upkeep(upkeep: list[Upkeep], stop: threading.Event) -> None:
    for i, work in enumerate(upkeep):  # daemons: they hold no batch, and stop at the next wake-up
        threading.Thread(target=work, args=(stop,), name=f"ragbus-upkeep-{i}", daemon=True).start()
