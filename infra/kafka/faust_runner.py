"""Runs a StreamStage as a faust-streaming agent (Kafka -> Kafka, at-least-once).

Delivery: faust acknowledges an event after the agent has moved past it and, before committing an
offset, flushes its producer (faust.transport.consumer._commit_offsets), so an offset is never
committed before the outputs of its event reached the broker. Downstream sinks write idempotently,
so the redelivery after a crash is harmless.

No event is acknowledged before it is finished. `Stream.take_events` acknowledges a batch in a
`finally` when the agent asks for the next one, *and* when the agent's loop is left by an exception
(the generator is closed), after which faust commits (`Consumer.on_task_error`, `on_stop`). So the
agent body never lets an exception out while it holds a batch: the batch processor is total (every
exception of the stage becomes a retry, or a dead letter for the one event that raised it), and if
anything still escapes (a bug in this runner, the producer refusing a send) the process exits at
once without acknowledging, exactly like a SIGKILL: the group resumes from the committed offset. A
stop request in the middle of a batch lets the batch finish within a grace period, else exits the
same way.

Values are read as raw bytes and decoded here, so an undecodable message still reaches the
dead-letter topic byte for byte. The stage function runs in a one-thread executor: the model never
blocks the event loop (heartbeats, fetching the next batch) and the order of events is kept.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faust

from infra.kafka.clients import SourceRecord, bootstrap, dead_letter, topic_name
from infra.kafka.serde import Headers, decode, encode, headers_for
from infra.ops import logs
from infra.ops.health import Health
from infra.ops.metrics import Metrics, Outcome
from infra.settings import Settings
from kernel.errors import PoisonMessageError, RetryableError
from kernel.stage import Out, PerEvent, StreamStage

log = logs.get(__name__)
FaustApp = faust.App
#: How long a stop request waits for the batch in hand before the process exits without acknowledging it.
STOP_GRACE_S = 20.0
#: Exit code of a worker that stopped itself rather than acknowledge a batch it could not finish.
EXIT_UNFINISHED_BATCH = 70


def _record(event: Any) -> SourceRecord:
    msg = event.message
    return SourceRecord(msg.topic, msg.partition, msg.offset, msg.key, msg.value, list(msg.headers or []))


def build_app(settings: Settings, stage: StreamStage, metrics: Metrics, health: Health | None = None) -> faust.App:
    session_s = settings.kafka.session_timeout_ms / 1000
    datadir = settings.data_dir / "faust" / stage.name
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
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
    )
    source = app.topic(topic_name(settings, stage.source), key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw", partitions=stage.source.partitions)
    sinks: dict[str, Any] = {}

    def sink(name: str) -> Any:
        if name not in sinks:
            sinks[name] = app.topic(name, key_serializer="raw", value_serializer="raw")
        return sinks[name]

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ragbus-{stage.name}")
    processor = _BatchProcessor(settings, stage, metrics, health)
    starts = 0

    async def finish(records: list[SourceRecord]) -> None:
        sends = await asyncio.get_running_loop().run_in_executor(executor, processor.process, records)
        for topic, key, value, headers in sends:
            await sink(topic).send(key=key, value=value, headers=headers)

    async def agent(stream: Any) -> Any:
        nonlocal starts
        starts += 1
        if starts > 1:  # faust restarts an agent that crashed: say so, it is never normal
            metrics.restarts.labels(stage.name).inc()
            if health is not None:
                health.restarted()
            log.error("agent restarted after a crash", stage=stage.name, restarts=starts - 1)
        async for batch in stream.take_events(stage.max_batch, within=stage.window_s or 0.001):
            records = [_record(e) for e in batch]
            started = time.perf_counter()
            work = asyncio.ensure_future(finish(records))
            try:
                await asyncio.shield(work)
            except asyncio.CancelledError:  # stopping: finish the batch in hand, or leave it unacknowledged
                try:
                    await asyncio.wait_for(work, STOP_GRACE_S)
                except BaseException as exc:
                    _exit_unacknowledged(stage.name, records, exc)
                raise
            except BaseException as exc:
                _exit_unacknowledged(stage.name, records, exc)
            metrics.batch_seconds.labels(stage.name).observe(time.perf_counter() - started)
            metrics.last_progress.labels(stage.name).set(time.time())
            if health is not None:
                health.progressed(len(records))
            yield len(records)

    async def report_lag() -> None:
        """Lag from faust's fetch high-water marks and its committed offsets (next offset to read)."""
        if health is None:
            return
        lag = {}
        for tp in app.consumer.assignment():
            if tp.topic != source.get_topic_name():
                continue
            high = app.consumer.highwater(tp)
            committed = getattr(app.consumer, "_committed_offset", {}).get(tp)  # faust has no public accessor
            if high is not None and high >= 0:
                lag[f"{tp.topic}[{tp.partition}]"] = max(0, high - (committed or 0))
        health.set_lag(lag)

    app.agent(source, name=f"ragbus.{stage.name}")(agent)
    app.timer(interval=2.0, name=f"ragbus.{stage.name}.lag")(report_lag)
    return app


def _exit_unacknowledged(stage: str, records: list[SourceRecord], exc: BaseException) -> None:
    """Leave the process without acknowledging `records` (faust would commit them on any other way out)."""
    where = f"{records[0].where()}..{records[-1].offset}" if records else "(empty batch)"
    log.critical("batch could not be finished; exiting without acknowledging it, so it is redelivered",
                 stage=stage, batch=where, events=len(records), error=f"{type(exc).__name__}: {exc}"[:500])
    sys.stderr.flush()
    os._exit(EXIT_UNFINISHED_BATCH)


class _BatchProcessor:
    """Decode, run the stage with bounded retries, and turn results into (topic, key, value, headers).

    Total: every exception of the stage, of any type, ends as a retry or as the dead letter of the one
    event that raised it; `process` itself raises only if this code is broken."""

    def __init__(self, settings: Settings, stage: StreamStage, metrics: Metrics, health: Health | None) -> None:
        self._settings = settings
        self._stage = stage
        self._metrics = metrics
        self._health = health

    def _out(self, out: Out) -> tuple[str, bytes, bytes, Headers]:
        return topic_name(self._settings, out.topic), out.key, encode(out.event), headers_for(out.event)

    def _dead(self, record: SourceRecord, exc: Exception, attempts: int = 1) -> tuple[str, Any, Any, Any]:
        log.warning("dead-lettered", stage=self._stage.name, where=record.where(),
                    correlation_id=record.correlation_id(), error=str(exc)[:300])
        self._metrics.events.labels(self._stage.name, Outcome.DEAD_LETTERED).inc()
        return dead_letter(self._settings, self._stage.name, record, exc, attempts)

    def _crashed(self, record: SourceRecord, exc: BaseException) -> None:
        log.error("stage raised an unexpected error on an event; dead-lettering it", stage=self._stage.name,
                  where=record.where(), correlation_id=record.correlation_id(),
                  error=f"{type(exc).__name__}: {exc}"[:300])
        self._metrics.crashes.labels(self._stage.name).inc()
        if self._health is not None:
            self._health.crashed(record.where(), record.correlation_id(), exc)

    def _run(self, events: list[Any]) -> tuple[list[PerEvent], int, Exception | None]:
        for attempt in range(1, self._stage.max_attempts + 1):
            try:
                return self._handle(events), attempt, None
            except RetryableError as exc:
                self._metrics.events.labels(self._stage.name, Outcome.RETRIED).inc(len(events))
                if attempt == self._stage.max_attempts:
                    return [], attempt, exc
                delay = exc.retry_after or min(30.0, 0.2 * 2 ** attempt) * (0.5 + random.random())
                log.warning("retrying batch", stage=self._stage.name, attempt=attempt, delay=round(delay, 2),
                            error=str(exc)[:300])
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _handle(self, events: list[Any]) -> list[PerEvent]:
        """The stage on the whole batch; if it fails unexpectedly, on each event alone, so the error lands
        on the event that causes it (dead-lettered) instead of stopping the stage."""
        try:
            return self._stage.handle(events)
        except RetryableError:
            raise
        except Exception as exc:
            if len(events) == 1:
                return [exc]
            log.error("batch failed unexpectedly; retrying its events one by one", stage=self._stage.name,
                      error=repr(exc))
            return [r for ev in events for r in self._handle([ev])]

    def process(self, records: list[SourceRecord]) -> list[tuple[str, Any, Any, Any]]:
        sends: list[tuple[str, Any, Any, Any]] = []
        good: list[tuple[SourceRecord, Any]] = []
        for record in records:
            try:
                good.append((record, decode(self._stage.source, record.value, self._settings.decode)))
            except PoisonMessageError as exc:
                sends.append(self._dead(record, exc))
        results, attempts, gave_up = self._run([ev for _, ev in good]) if good else ([], 1, None)
        for i, (record, event) in enumerate(good):
            result: PerEvent = gave_up if gave_up is not None else results[i]
            if not isinstance(result, Exception):
                try:
                    sends.extend([self._out(o) for o in result])
                    self._metrics.events.labels(self._stage.name, Outcome.OK).inc()
                    continue
                except Exception as exc:  # an output that cannot be encoded: the stage's bug, this event's fault
                    result = exc
            if not isinstance(result, PoisonMessageError | RetryableError):
                self._crashed(record, result)
            sends.append(self._dead(record, result, attempts))
            sends.extend(self._failure_outputs(record, event, result))
        return sends

    def _failure_outputs(self, record: SourceRecord, event: Any, exc: Exception) -> list[tuple[str, Any, Any, Any]]:
        if self._stage.on_failure is None:
            return []
        try:
            return [self._out(o) for o in self._stage.on_failure(event, exc)]
        except Exception as hook_exc:  # the event is dead-lettered already; only its status report is lost
            log.error("could not report a dead-lettered event's failure", stage=self._stage.name,
                      where=record.where(), error=repr(hook_exc)[:300])
            return []


def run(app: faust.App, settings: Settings) -> None:
    """Run the faust worker in the foreground until SIGINT/SIGTERM."""
    worker = faust.Worker(app, loglevel=settings.log_level.lower(), quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
