"""Runs a StreamStage as a faust-streaming agent (Kafka -> Kafka, at-least-once).

Delivery: faust acknowledges an event after the agent has moved past it and, before committing an
offset, flushes its producer (faust.transport.consumer._commit_offsets), so an offset is never
committed before the outputs of its event reached the broker. Outputs are deterministic, so the
redelivery after a crash republishes identical events, which downstream sinks write idempotently.

Values are read as raw bytes and decoded here, so an undecodable message still reaches the
dead-letter topic byte for byte. The stage function runs in a one-thread executor: the model never
blocks the event loop (heartbeats, fetching the next batch) and the order of events is kept.
"""

from __future__ import annotations

import asyncio
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faust

from schemas.topics import TOPICS

from . import logs
from .errors import PoisonMessageError, RetryableError
from .health import Health
from .kafka import SourceRecord, bootstrap, dead_letter_headers, topic_name
from .metrics import Metrics, Outcome
from .serde import Headers, decode, encode, headers_for
from .settings import Settings
from .stage import Out, PerEvent, StreamStage

log = logs.get(__name__)
FaustApp = faust.App


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
    processor = _BatchProcessor(settings, stage, metrics)

    async def agent(stream: Any) -> Any:
        loop = asyncio.get_running_loop()
        async for batch in stream.take_events(stage.max_batch, within=stage.window_s or 0.001):
            records = [_record(e) for e in batch]
            started = time.perf_counter()
            sends = await loop.run_in_executor(executor, processor.process, records)
            for topic, key, value, headers in sends:
                await sink(topic).send(key=key, value=value, headers=headers)
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


class _BatchProcessor:
    """Decode, run the stage with bounded retries, and turn results into (topic, key, value, headers)."""

    def __init__(self, settings: Settings, stage: StreamStage, metrics: Metrics) -> None:
        self._settings = settings
        self._stage = stage
        self._metrics = metrics

    def _out(self, out: Out) -> tuple[str, bytes, bytes, Headers]:
        return topic_name(self._settings, out.topic), out.key, encode(out.event), headers_for(out.event)

    def _dead(self, record: SourceRecord, exc: Exception, attempts: int = 1) -> tuple[str, Any, Any, Any]:
        log.warning("dead-lettered", stage=self._stage.name, where=record.where(),
                    correlation_id=record.correlation_id(), error=str(exc)[:300])
        self._metrics.events.labels(self._stage.name, Outcome.DEAD_LETTERED).inc()
        dlq = topic_name(self._settings, TOPICS.dead_letter(self._stage.name))
        return dlq, record.key, record.value, dead_letter_headers(record, self._stage.name, exc, attempts)

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
                good.append((record, decode(self._stage.source, record.value)))
            except PoisonMessageError as exc:
                sends.append(self._dead(record, exc))
        results, attempts, gave_up = self._run([ev for _, ev in good]) if good else ([], 1, None)
        for i, (record, event) in enumerate(good):
            result: PerEvent = gave_up if gave_up is not None else results[i]
            if isinstance(result, Exception):
                sends.append(self._dead(record, result, attempts))
                if self._stage.on_failure:
                    sends.extend(self._out(o) for o in self._stage.on_failure(event, result))
                continue
            self._metrics.events.labels(self._stage.name, Outcome.OK).inc()
            sends.extend(self._out(o) for o in result)
        return sends


def run(app: faust.App, settings: Settings) -> None:
    """Run the faust worker in the foreground until SIGINT/SIGTERM."""
    worker = faust.Worker(app, loglevel=settings.log_level.lower(), quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
