"""Runs a Stage as a faust-streaming agent (Kafka -> Kafka, at-least-once).

This module is only the transport; what happens to a batch is the delivery policy's (delivery.py),
shared with the confluent-kafka runtime. Values are read as raw bytes and decoded by the policy, so an
undecodable message still reaches the dead-letter topic byte for byte. The policy runs in a one-thread
executor: the model never blocks the event loop (heartbeats, fetching the next batch), and the order of
events is kept. While the policy waits (backoff, a broken stage probing), faust's consumer keeps its
group membership and its fetch buffer is bounded by `stream_buffer_maxsize`.

Delivery: faust acknowledges an event after the agent has moved past it and, before committing an
offset, flushes its producer (faust.transport.consumer._commit_offsets), so an offset is never
committed before the outputs of its event reached the broker. Downstream stages write idempotently,
so the redelivery after a crash is harmless.

No event is acknowledged before it is finished. `Stream.take_events` acknowledges a batch in a
`finally` when the agent asks for the next one, *and* when the agent's loop is left by an exception
(the generator is closed), after which faust commits (`Consumer.on_task_error`, `on_stop`). So the
agent body never lets an exception out while it holds a batch: the policy is total, and if anything
still escapes (a bug in this runner, the producer refusing a send) the process exits at once without
acknowledging, exactly like a SIGKILL: the group resumes from the committed offset. A stop request in
the middle of a batch lets the batch finish within a grace period; a batch the policy gives up (it was
waiting when the stop came) leaves the same way, unacknowledged.

What this relies on beyond faust's public API (the fetch wait, committed offsets, connection state, the exit
without clean-up) is in faust_seam.py, with why each exists.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import NoReturn, cast

import faust
from faust.streams import Stream
from faust.types import TP, AppT, EventT, StreamT, TopicT

from infra.ops import logs
from infra.ops.health import Health
from infra.ops.metrics import Metrics
from infra.settings import Settings
from kernel.errors import ConfigurationError
from schemas.stages import Runtime

from .clients import bootstrap, partitions, topic_name
from .delivery import BatchPolicy, Done, slices
from .faust_seam import FaustApp as FaustApp
from .faust_seam import broker_connected, committed_offset, leave_unacknowledged, verify
from .records import Headers, SourceRecord, describe
from .security import faust_options

log = logs.get(__name__)
#: How long a stop request waits for the batch in hand before the process exits without acknowledging it.
STOP_GRACE_S = 20.0
#: Exit code of a worker that stopped itself rather than acknowledge a batch it could not finish.
EXIT_UNFINISHED_BATCH = 70
#: Exit code when a stop request came while the batch in hand could not finish (it is redelivered).
EXIT_STOPPED = 0
GIVEN_UP = "the batch was given up while waiting (the worker is stopping)"


def _record(event: EventT[bytes]) -> SourceRecord:
    msg = event.message
    raw = msg.headers.items() if isinstance(msg.headers, Mapping) else msg.headers or []
    headers: Headers = [(k, v) for k, v in raw]
    return SourceRecord(msg.topic, msg.partition, msg.offset, msg.key, msg.value, headers)


def _faust_headers(headers: Headers) -> list[tuple[str, bytes]]:
    """faust annotates header values as bytes; aiokafka writes them as Kafka has them (str or bytes, or None for a
    null value a dead letter keeps from its original)."""
    return cast(list[tuple[str, bytes]], headers)


def build_app(settings: Settings, policy: BatchPolicy, metrics: Metrics, health: Health | None = None) -> FaustApp:
    stage = policy.stage
    if stage.spec.runtime is not Runtime.FAUST:
        raise ConfigurationError(f"the {stage.name} stage is declared to run on {stage.spec.runtime} "
                                 "(schemas/stages.py), not on faust-streaming")
    session_s = settings.kafka.session_timeout_ms / 1000
    datadir = settings.data_dir / "faust" / stage.name
    datadir.mkdir(parents=True, exist_ok=True)
    security, ignored = faust_options(settings.kafka.client_config)  # the same cluster settings as every stage
    if ignored:
        log.info("client settings that apply to the confluent-kafka stages only", stage=stage.name, keys=ignored)
    app = FaustApp(
        f"{settings.kafka.topic_prefix}{stage.name}",
        broker=[f"kafka://{s.strip()}" for s in bootstrap(settings).split(",")],
        store="memory://",
        web_enabled=False,
        topic_disable_leader=True,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=session_s,
        broker_heartbeat_interval=max(0.1, session_s / 4),
        broker_commit_interval=0.5,
        broker_max_poll_records=max(stage.max_batch * 2, 100),
        stream_buffer_maxsize=max(stage.max_batch * 4, 256),
        producer_max_request_size=settings.kafka.message_max_bytes,
        consumer_max_fetch_size=settings.kafka.message_max_bytes,
        datadir=str(datadir),
        producer_acks=-1,
        **security,
    )
    app.fetch_wait_ms = settings.fetch_wait_ms()  # faust's own 1.5 s, replaced (engine/faust_seam.py)
    verify(app)
    source = app.topic(topic_name(settings, stage.source), key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw", partitions=partitions(settings, stage.source))
    sinks: dict[str, TopicT] = {}

    def sink(name: str) -> TopicT:
        if name not in sinks:
            sinks[name] = app.topic(name, key_serializer="raw", value_serializer="raw")
        return sinks[name]

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ragbus-{stage.name}")
    stopping = threading.Event()
    starts = 0

    def wait(seconds: float) -> bool:
        return not stopping.wait(seconds)

    async def finish(records: list[SourceRecord]) -> Done | None:
        """The batch processed and its outputs sent; None when the policy gave it up (the worker is stopping)."""
        done = await asyncio.get_running_loop().run_in_executor(executor, policy.process, records, wait)
        for send in done.sends if done is not None else []:
            await sink(send.topic).send(key=send.key, value=send.value, headers=_faust_headers(send.headers))
        return done

    async def agent(stream: StreamT[bytes]) -> AsyncIterator[int]:
        nonlocal starts
        starts += 1
        if starts > 1:  # faust restarts an agent that crashed: say so, it is never normal
            metrics.restarts.labels(stage.name).inc()
            if health is not None:
                health.restarted()
            log.error("agent restarted after a crash", stage=stage.name, restarts=starts - 1)
        batches = cast(Stream[bytes], stream).take_events(stage.max_batch, within=stage.window_s or 0.001)
        async for batch in batches:  # (faust's StreamT does not declare take_events; its Stream does)
            records = [_record(e) for e in batch]
            # each slice processed and its outputs sent in turn, smallest documents first; the batch is
            # acknowledged once every slice is done (nothing of it before)
            for part in slices(records, stage.slice_bytes):
                started = time.perf_counter()
                work = asyncio.ensure_future(finish(part))
                try:
                    done = await asyncio.shield(work)
                except asyncio.CancelledError:  # stopping: finish the slice in hand, or leave the batch unacked
                    stopping.set()  # a policy that is waiting gives the batch up at once
                    try:
                        done = await asyncio.wait_for(work, STOP_GRACE_S)
                    except BaseException as exc:
                        _exit_unacknowledged(stage.name, records, _error(exc), EXIT_STOPPED)
                    if done is None:
                        _exit_unacknowledged(stage.name, records, GIVEN_UP, EXIT_STOPPED)
                    raise
                except BaseException as exc:
                    _exit_unacknowledged(stage.name, records, _error(exc), EXIT_UNFINISHED_BATCH)
                if done is None:  # given up: the policy does so only while the worker is stopping
                    _exit_unacknowledged(stage.name, records, GIVEN_UP, EXIT_STOPPED)
                policy.finished(part, done, started)
            yield len(records)

    if health is not None:
        _report_health(app, source.get_topic_name(), health)
    app.agent(source, name=f"ragbus.{stage.name}")(agent)
    return app


def _report_health(app: FaustApp, topic: str, health: Health) -> None:
    """Liveness from a timer on the event loop, readiness from the rebalance signals and aiokafka's
    connections, lag and stalls from faust's committed offsets and fetch high-water marks."""

    def on_assigned(_: AppT, /, *args: set[TP], signal: object, **__: object) -> None:  # args: (the partitions,)
        health.assigned([(tp.topic, tp.partition) for tp in args[0] if tp.topic == topic])

    def on_revoked(_: AppT, /, *__: object, signal: object, **___: object) -> None:
        health.revoked()

    app.on_partitions_assigned.connect(on_assigned)
    app.on_partitions_revoked.connect(on_revoked)

    async def tick() -> None:
        health.tick()

    async def observe() -> None:
        health.connection(*broker_connected(app))
        offsets: dict[tuple[str, int], tuple[int | None, int]] = {}
        for tp in app.consumer.assignment():
            high = app.consumer.highwater(tp) if tp.topic == topic else None
            if high is not None and high >= 0:
                # None: the group never committed (it starts at offset 0)
                offsets[(tp.topic, tp.partition)] = (committed_offset(app, tp) or 0, high)
        health.observe(offsets)

    app.timer(interval=1.0, name="ragbus.tick")(tick)
    app.timer(interval=2.0, name="ragbus.lag")(observe)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def _exit_unacknowledged(stage: str, records: list[SourceRecord], error: str, code: int) -> NoReturn:
    """Leave the process without acknowledging `records` (faust would commit them on any other way out)."""
    where = describe(records) or "(empty batch)"  # a faust batch can span partitions: ranges per partition
    log.critical("batch could not be finished; exiting without acknowledging it, so it is redelivered",
                 stage=stage, batch=where, events=len(records), error=error)
    leave_unacknowledged(code)


def run(app: FaustApp, settings: Settings) -> None:
    """Run the faust worker in the foreground until SIGINT/SIGTERM."""
    # override_logging=False: the process's logging (infra/ops/logs.py) renders faust's lines too
    worker = faust.Worker(app, loglevel=settings.log_level.lower(), quiet=True, redirect_stdouts=False,
                          override_logging=False)
    # faust's terminal progress spinner writes cursor control codes to stdout even when it is not a terminal,
    # which breaks one-JSON-object-per-line logs; a service has no use for it.
    worker.spinner = None
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
