"""The delivery policy: what becomes of a batch of consumed records. There is one, and both runtimes (faust
agents and confluent-kafka consumers) hand every batch to it, so retries, dead letters, isolation, the
failure breaker, metrics and log fields are the same in every stage.

For a batch of records, `BatchPolicy.process`:

1. decodes each record; one that cannot be decoded is dead-lettered with the reason (decoding is total);
2. runs the stage on the decoded events, and by the type of what it raises:
   - RetryableError: tenacity retries the batch with exponential backoff and jitter (a `retry_after`
     wins), `retry_attempts` times; the runtime's `wait` keeps the consumer in its group meanwhile;
     still failing, the backend is down: the stage breaks (below);
   - ConfigurationError: nothing will work until an operator acts: the stage breaks at once;
   - anything else: the events are run one at a time, so the exception lands on the event that raises
     it; that event is dead-lettered with the exception as its reason, the rest go on;
3. encodes the outputs; an output too large for any topic, or on a topic the stage's declaration does not list
   (schemas/stages.py), is its event's failure, not the runner's.

The failure breaker (`Breaker`) is what stops a stage that fails on everything (a bad release, a
mis-classified outage) from emptying its stream into the dead-letter topic one event at a time: when,
within a window, unexpected failures reach a count and a share of the events handled, the stage
breaks. Breaking means: the batch in hand is held (nothing of it is dead-lettered or committed), the
stage reports itself broken (`/health` 503, `ragbus_stage_broken`, an ERROR log saying why), and it
probes: every `probe_interval_s` (doubling) it runs the held events one at a time; as soon as one is
handled, the breaker closes and the batch is processed as usual: the stage has shown it works, so the
batch's remaining failures are its events' own and are dead-lettered (the breaker does not open again
on the same batch, which could hold it forever). A restart closes the breaker too. A poison event
among good ones does not break anything: it is dead-lettered alone.

`process` returns the messages to produce (outputs, dead letters, failure statuses), or None when the
runtime's `wait` says to give the batch up (stopping, partitions revoked): then nothing of the batch
may be committed, and it is redelivered.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import tenacity

from infra.ops import logs
from infra.ops.health import Health
from infra.ops.metrics import Metrics, Outcome
from infra.ops.tracing import BatchSpans, Headers
from infra.settings import DeliverySettings, Settings
from kernel.errors import ConfigurationError, PoisonMessageError, RetryableError
from kernel.stage import Out, PerEvent, Stage

from .records import Send, SourceRecord, dead_letter, describe
from .serde import decode, encode, headers_for

log = logs.get(__name__)
#: `wait(seconds) -> bool`: the runtime waits without leaving its consumer group; False means give up.
Wait = Callable[[float], bool]
_PROBE_EVENTS = 3
#: Closes the CPU count of one step of a batch and opens the next one's (BatchPolicy.cpu_step).
CpuStep = Callable[[str | None], "CpuStep"]


def _no_step(following: str | None) -> CpuStep:
    return _no_step


#: A decoded event with its index in the batch and its record.
_Item = tuple[int, SourceRecord, Any]
#: A wrongly keyed event is counted every time, logged at most this often per stage.
_REKEY_LOG_EVERY_S = 60.0


@dataclass(frozen=True)
class Done:
    """A processed batch: what to produce before its offsets are committed."""

    sends: list[Send]
    dead_lettered: int


class _Broken(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Abandoned(Exception):
    pass


class Breaker:
    """Counts handled and unexpectedly failed events over a sliding window."""

    def __init__(self, settings: DeliverySettings, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._events: deque[tuple[float, int, int]] = deque()

    def record(self, ok: int, failed: int) -> bool:
        """Add a batch's counts; True when the failures now cross the threshold."""
        now = self._clock()
        self._events.append((now, ok, failed))
        while self._events and self._events[0][0] < now - self._settings.breaker_window_s:
            self._events.popleft()
        failures = sum(f for _, _, f in self._events)
        handled = failures + sum(o for _, o, _ in self._events)
        return (failures >= self._settings.breaker_min_failures
                and failures >= self._settings.breaker_failure_ratio * handled)

    def reset(self) -> None:
        self._events.clear()


class BatchPolicy:
    def __init__(self, settings: Settings, stage: Stage, metrics: Metrics, health: Health | None = None) -> None:
        self._settings = settings
        self._policy = settings.delivery
        self._stage = stage
        self._metrics = metrics
        self._health = health
        self._breaker = Breaker(settings.delivery)
        self._rekey_logged = -_REKEY_LOG_EVERY_S
        self._backoff = tenacity.wait_exponential_jitter(multiplier=self._policy.backoff_initial_s,
                                                         jitter=self._policy.backoff_initial_s,
                                                         max=self._policy.backoff_max_s)

    @property
    def stage(self) -> Stage:
        return self._stage

    # -- the batch ---------------------------------------------------------------------------------
    def process(self, records: Sequence[SourceRecord], wait: Wait) -> Done | None:
        """Every log line meanwhile carries the stage and the batch (`topic[p]@a..b`), and every line
        about one event its `where` and `correlation_id`; each record gets its trace span."""
        spans = BatchSpans(self._stage.name, f"{self._settings.kafka.topic_prefix}{self._stage.name}", records)
        outcome = "abandoned"
        trust = False  # after a probe went through, the batch's own failures are its events' own
        if self._health is not None:
            self._health.batch_started()
        try:
            with logs.bound_context(stage=self._stage.name, batch=describe(records)):
                while True:
                    try:
                        done = self._attempt(records, wait, spans, breaker=not trust)
                        outcome = "ok"
                        return done
                    except _Abandoned:
                        return None
                    except _Broken as broken:
                        if not self._hold(records, wait, broken.reason):
                            return None
                        trust = True
        finally:
            spans.end(outcome)
            if self._health is not None:
                self._health.batch_ended()

    def _attempt(self, records: Sequence[SourceRecord], wait: Wait, spans: BatchSpans, breaker: bool = True) -> Done:
        sends: list[Send] = []
        decoded: list[_Item] = []
        dead = 0
        cpu = self.cpu_step("decode")
        for i, record in enumerate(records):
            try:
                event = decode(self._stage.source, record.value, self._settings.decode)
            except PoisonMessageError as exc:
                spans.failed(i, exc)
                sends.append(self._dead(record, exc))
                dead += 1
                continue
            spans.decoded(i, event)
            refused = self._check_key(record, event)
            if refused is not None:
                spans.failed(i, refused)
                sends.append(self._dead(record, refused, event))
                sends += self._failure_outputs(record, event, refused, spans.headers(i))
                dead += 1
                continue
            decoded.append((i, record, event))
        cpu = cpu("handle")
        if not decoded:
            cpu(None)
            return Done(sends, dead)
        results = self._run(decoded, wait, spans)
        cpu = cpu("encode")
        outputs: list[list[Send] | Exception] = [self._encode(r, spans.headers(i))
                                                 for (i, _, _), r in zip(decoded, results, strict=True)]
        cpu(None)
        failed = [(item, out) for item, out in zip(decoded, outputs, strict=True)
                  if isinstance(out, Exception) and not isinstance(out, PoisonMessageError)]
        if self._breaker.record(len(outputs) - len(failed), len(failed)) and breaker:
            raise _Broken(f"{len(failed)} of {len(outputs)} events of the last batch failed unexpectedly "
                          f"(last: {type(failed[-1][1]).__name__}: {str(failed[-1][1])[:200]})")
        for (i, record, event), out in zip(decoded, outputs, strict=True):
            if isinstance(out, Exception):
                spans.failed(i, out)
                if not isinstance(out, PoisonMessageError):
                    self._crashed(record, event, out)
                sends.append(self._dead(record, out, event))
                sends += self._failure_outputs(record, event, out, spans.headers(i))
                dead += 1
            else:
                sends += out
        return Done(sends, dead)

    def cpu_step(self, step: str) -> CpuStep:
        """Start counting CPU seconds as `step`; the returned function closes it and starts the next step (None:
        none). The CPU account of bench/cpu_account.py. `handle` counts the whole process's CPU meanwhile, since
        a model or a store computes in thread pools of its own (in a process of several stages that includes
        what the others did meanwhile); the other steps count this thread's."""
        clock = time.process_time if step == "handle" else time.thread_time
        started = clock()

        def close(following: str | None) -> CpuStep:
            self._metrics.cpu_seconds.labels(self._stage.name, step).inc(clock() - started)
            return self.cpu_step(following) if following is not None else _no_step
        return close

    def _run(self, items: list[_Item], wait: Wait, spans: BatchSpans) -> list[PerEvent]:
        """The stage on the batch, with retries; an unexpected failure is run down to its event."""
        events = [event for _, _, event in items]
        fields = [(i, event, _fields(record, event)) for i, record, event in items]
        alone = logs.bound_context(**fields[0][2]) if len(items) == 1 else nullcontext()
        try:
            with spans.handling(fields), alone:
                return self._retrying(lambda: self._stage.handle(events), wait)
        except ConfigurationError as exc:
            raise _Broken(f"configuration: {exc}") from exc
        except RetryableError as exc:
            raise _Broken(f"still failing after {self._policy.retry_attempts} attempts: {exc}") from exc
        except (_Abandoned, _Broken):
            raise
        except Exception as exc:
            if len(items) == 1:
                return [exc]
            log.warning("batch failed unexpectedly; running its events one by one", stage=self._stage.name,
                        events=len(items), error=f"{type(exc).__name__}: {exc}"[:300])
            return [result for item in items for result in self._run([item], wait, spans)]

    def _retrying(self, call: Callable[[], list[PerEvent]], wait: Wait) -> list[PerEvent]:
        def sleep(seconds: float) -> None:
            if not wait(seconds):
                raise _Abandoned

        def delay(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            after = getattr(exc, "retry_after", None)
            return float(after) if after else backoff(state)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            self._metrics.events.labels(self._stage.name, Outcome.RETRIED).inc()
            exc = state.outcome.exception() if state.outcome else None
            log.warning("transient failure; retrying the batch", stage=self._stage.name,
                        attempt=state.attempt_number, delay_s=round(state.upcoming_sleep, 2), error=str(exc)[:300])

        backoff = self._backoff
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(RetryableError), wait=delay, sleep=sleep, reraise=True,
            stop=tenacity.stop_after_attempt(self._policy.retry_attempts), before_sleep=before_sleep)
        return retrying(call)

    # -- breaking and recovering ------------------------------------------------------------------
    def _hold(self, records: Sequence[SourceRecord], wait: Wait, reason: str) -> bool:
        """Hold the batch while the stage is broken; True once a probe event went through."""
        log.error("stage broken: holding its events uncommitted and probing", stage=self._stage.name, reason=reason)
        self._metrics.broken.labels(self._stage.name).set(1)
        if self._health is not None:
            self._health.broken(reason)
        delay = self._policy.probe_interval_s
        while True:
            if not wait(delay):
                return False
            if self._probe(records):
                self._breaker.reset()
                self._metrics.broken.labels(self._stage.name).set(0)
                if self._health is not None:
                    self._health.recovered()
                log.warning("stage recovered: a probe event went through", stage=self._stage.name)
                return True
            delay = min(delay * 2, self._policy.probe_max_s)

    def _probe(self, records: Sequence[SourceRecord]) -> bool:
        for record in records[:_PROBE_EVENTS]:
            try:
                event = decode(self._stage.source, record.value, self._settings.decode)
                result = self._stage.handle([event])[0]
            except PoisonMessageError:
                return True  # the stage works: it judged this event bad
            except Exception as exc:
                log.info("probe failed", stage=self._stage.name, where=record.where(),
                         correlation_id=record.correlation_id(), error=repr(exc)[:200])
                continue
            if not isinstance(result, Exception) or isinstance(result, PoisonMessageError):
                return True
        return False

    # -- outputs, dead letters ------------------------------------------------------------------
    def _encode(self, result: PerEvent, trace_headers: Headers) -> list[Send] | Exception:
        if isinstance(result, Exception):
            return result
        try:
            return [self._send(out, trace_headers) for out in result]
        except Exception as exc:  # an output that cannot be encoded or is too large: this event's failure
            return exc

    def _send(self, out: Out, trace_headers: Headers) -> Send:
        self._stage.spec.check_writes(out.topic)  # publishing elsewhere is a bug in the stage, failing its event
        value = encode(out.event)
        if len(value) > self._settings.kafka.message_max_bytes:
            raise PoisonMessageError(f"the {out.topic.name} event this produces is {len(value)} bytes, over the "
                                     f"{self._settings.kafka.message_max_bytes}-byte message limit")
        return Send(out.topic.physical(self._settings.kafka.topic_prefix), out.key, value,
                    headers_for(out.event) + trace_headers)

    def _failure_outputs(self, record: SourceRecord, event: Any, exc: Exception, trace_headers: Headers
                         ) -> list[Send]:
        if self._stage.on_failure is None:
            return []
        try:
            return [self._send(o, trace_headers) for o in self._stage.on_failure(event, exc)]
        except Exception as hook_exc:  # the event is dead-lettered already; only its status report is lost
            log.error("could not report a dead-lettered event's failure", stage=self._stage.name,
                      **_fields(record, event), error=repr(hook_exc)[:300])
            return []

    def _check_key(self, record: SourceRecord, event: Any) -> PoisonMessageError | None:
        """Count (and now and then log) an event that arrived without its topic's key: it is handled all the
        same, and the stage keys its outputs correctly, but its publisher should fix its producer. An event the
        stage keys strictly, under another key than its own, is refused instead (returned, to dead-letter)."""
        if self._stage.key is None:
            return None
        expected = self._stage.key(event)
        if record.key == expected:
            return None
        if record.key and self._stage.strict_key is not None and self._stage.strict_key(event):
            return PoisonMessageError(
                f"record key {record.key[:200].decode('utf-8', 'replace')!r} is not this event's own key "
                f"{expected[:200].decode('utf-8', 'replace')!r} (tenant/document_id): publish it under its own key")
        self._metrics.rekeyed.labels(self._stage.name).inc()
        now = time.monotonic()
        if now - self._rekey_logged >= _REKEY_LOG_EVERY_S:
            self._rekey_logged = now
            log.warning("event without its topic's key: handled and re-keyed; its publisher should key it",
                        stage=self._stage.name, **_fields(record, event),
                        key=(record.key or b"")[:200].decode("utf-8", "replace") or None,
                        expected=expected[:200].decode("utf-8", "replace"))
        return None

    def _crashed(self, record: SourceRecord, event: object, exc: Exception) -> None:
        fields = _fields(record, event)
        log.error("stage raised an unexpected error on an event; dead-lettering it", stage=self._stage.name,
                  **fields, error=f"{type(exc).__name__}: {exc}"[:300], exc_info=exc)  # a bug: where it is
        self._metrics.crashes.labels(self._stage.name).inc()
        if self._health is not None:
            self._health.crashed(record.where(), fields["correlation_id"], exc)

    def _dead(self, record: SourceRecord, exc: Exception, event: object = None) -> Send:
        log.warning("dead-lettered", stage=self._stage.name, **_fields(record, event),
                    error_type=type(exc).__name__, error=str(exc)[:300])
        self._metrics.events.labels(self._stage.name, Outcome.DEAD_LETTERED).inc()
        return dead_letter(self._settings.kafka.topic_prefix, self._settings.kafka.message_max_bytes,
                           self._stage.spec, record, exc)

    # -- after the runtime committed ---------------------------------------------------------------
    def finished(self, records: Sequence[SourceRecord], done: Done, started: float) -> None:
        """Accounting once the batch's offsets are committed (or acknowledged)."""
        self._metrics.events.labels(self._stage.name, Outcome.OK).inc(len(records) - done.dead_lettered)
        self._metrics.batch_seconds.labels(self._stage.name).observe(time.perf_counter() - started)
        self._metrics.last_progress.labels(self._stage.name).set(time.time())
        if self._health is not None:
            self._health.progressed(len(records), time.perf_counter() - started)


def _fields(record: SourceRecord, event: object = None) -> dict[str, str]:
    """The log fields of a line about one message: where it is and its correlation id (the header's,
    else the event's own)."""
    return {"where": record.where(),
            "correlation_id": record.correlation_id() or str(getattr(event, "correlation_id", "") or "")}


def slices(records: Sequence[SourceRecord], budget: int) -> list[list[SourceRecord]]:
    """A batch cut into slices of at most `budget` bytes of values each (a single larger record is a slice of its
    own), documents ordered smallest first: records are grouped by key (order kept within a key; a keyless record
    is a group of its own), groups ordered by their total size (stable), and packed in that order. So a short
    document in a batch behind a long one is handled, and its outputs sent, first; per-key order is kept.
    `budget` 0: the batch as it is."""
    if budget <= 0 or len(records) <= 1:
        return [list(records)]
    groups: dict[object, list[SourceRecord]] = {}
    for n, r in enumerate(records):
        groups.setdefault(r.key if r.key is not None else ("keyless", n), []).append(r)
    out: list[list[SourceRecord]] = []
    current: list[SourceRecord] = []
    size = 0
    for group in sorted(groups.values(), key=lambda g: sum(len(r.value or b"") for r in g)):
        for r in group:
            weight = len(r.value or b"")
            if current and size + weight > budget:
                out.append(current)
                current, size = [], 0
            current.append(r)
            size += weight
    if current:
        out.append(current)
    return out

