"""What a stage process says about itself: live, ready, and ok / stalled / broken.

- **Live** (`/livez`): the stage's loop is turning: the consumer loop polled, or the faust event loop
  ran its timer, within `liveness_timeout_s`. A stage inside a batch is live however long the batch
  takes: a slow or hung batch is a stall (below), which a restart would not mend (the batch would be
  redelivered and hang again), so it is reported, not restarted.
- **Ready** (`/readyz`): connected to Kafka and holding a partition assignment from its group (an
  empty one counts: a member with no partitions is working as intended).
- **Stalled**: the stage has lag (messages between its committed offsets and the fetch high-water
  marks) and none of its committed offsets has moved for longer than the stall bound, counted from
  the later of the last move and the moment lag appeared. So a stage idle for an hour is not stalled
  the moment work arrives, and a long batch is not a stall while it is within the bound. Progress on
  any partition counts: under a backlog a consumer serves its partitions in turn, so one partition
  may wait several batches while the others move (each partition's `stuck_s` is in the snapshot). The bound is
  `RAGBUS_STALL_AFTER_S` when set, else derived from the stage's own batches:
  max(`RAGBUS_STALL_MIN_S`, `RAGBUS_STALL_FACTOR` x the longest of its last 32 batch durations).
  This is what catches a sink that hangs, a stage stuck in backoff, and faust agents that stop
  consuming after some rebalances (faust-streaming #175, #532). Lag comes from the fetch high-water
  mark the client already has (Tansu answers ListOffsets(latest) wrongly).
- **Broken**: the failure breaker is open (engine/delivery.py): the stage holds its events.
- **Degraded**: the stage goes on, in a reduced mode an operator must mend: the answerer while its answer
  model refuses every request (it answers extractively; consumers/model_guard.py).

States, worst first: broken, stalled, degraded, disconnected, starting, ok. `/health` answers the state of
every stage in the process as JSON, 503 when one is broken, stalled or degraded. The same state is in the
`ragbus_stage_*` gauges and in a small JSON file per process in `<data_dir>/health/`, which
`ragbus status` reads on one machine.

This module is the state machine; the file is infra/ops/health_file.py's (writer and reader), the HTTP
endpoints infra/ops/endpoints.py's.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.ops.health_file import HealthFile
from infra.ops.logs import where
from infra.ops.metrics import Metrics
from infra.settings import Settings

#: Batch durations remembered for the derived stall bound.
RECENT_BATCHES = 32
UNHEALTHY = frozenset({"broken", "stalled", "degraded"})
#: A partition of the stage's input: (topic, partition number).
TopicPartition = tuple[str, int]


@dataclass(frozen=True)
class StallPolicy:
    """How long a partition with lag may go without its committed offset moving."""

    fixed_s: float | None = None
    min_s: float = 120.0
    factor: float = 3.0
    liveness_timeout_s: float = 60.0

    @classmethod
    def of(cls, settings: Settings) -> StallPolicy:
        return cls(settings.stall_after_s, settings.stall_min_s, settings.stall_factor, settings.liveness_timeout_s)

    def bound(self, durations: deque[float]) -> float:
        if self.fixed_s is not None:
            return self.fixed_s
        return max(self.min_s, self.factor * max(durations, default=0.0))


@dataclass
class _Partition:
    committed: int | None
    high: int
    moved_at: float
    lag_since: float | None = None

    @property
    def lag(self) -> int:
        return max(0, self.high - (self.committed or 0))

    def stuck_s(self, now: float) -> float:
        """How long this partition has had lag without its committed offset moving."""
        if self.lag_since is None:
            return 0.0
        return now - max(self.moved_at, self.lag_since)


class Health:
    def __init__(self, stage: str, metrics: Metrics, directory: Path | None = None,
                 policy: StallPolicy | None = None, clock: Callable[[], float] = time.time) -> None:
        self.stage = stage
        self._metrics = metrics
        self._policy = policy or StallPolicy()
        self._clock = clock
        self._file = HealthFile(directory / f"{stage}-{os.getpid()}.json", stage) if directory else None
        self._lock = threading.RLock()
        self._partitions: dict[TopicPartition, _Partition] = {}
        #: When a committed offset of the stage last moved, and since when it has had lag.
        self._moved_at = clock()
        self._lag_since: float | None = None
        self._durations: deque[float] = deque(maxlen=RECENT_BATCHES)
        self._last_tick = clock()
        self._in_batch_since: float | None = None
        self._assignment: set[TopicPartition] | None = None
        self._connected = True
        self._connection_error: str | None = None
        self.processed = 0
        self.last_progress: float | None = None
        self.crashes = 0
        self.restarts = 0
        self.last_crash: dict[str, str | float] | None = None
        #: Why the stage stopped taking events (its failure breaker is open), or None.
        self.broken_reason: str | None = None
        #: Why the stage works in a reduced mode (the answerer without its model), or None.
        self.degraded_reason: str | None = None
        # evaluated at each scrape, so they are true even while the stage's loop is stuck in a batch
        metrics.ready.labels(stage).set_function(lambda: 1.0 if self.ready() else 0.0)
        metrics.stalled.labels(stage).set_function(lambda: 1.0 if self.stalled() else 0.0)
        metrics.stall_bound.labels(stage).set_function(self.stall_bound)

    # -- what the runners report ------------------------------------------------------------------
    def tick(self) -> None:
        """The stage's loop turned (a poll, a timer)."""
        self._last_tick = self._clock()

    def batch_started(self) -> None:
        with self._lock:
            self._in_batch_since = self._clock()
            self._last_tick = self._in_batch_since

    def batch_ended(self) -> None:
        with self._lock:
            self._in_batch_since = None
            self._last_tick = self._clock()

    def progressed(self, n: int, seconds: float) -> None:
        """A batch of `n` events finished (committed or acknowledged) in `seconds`."""
        with self._lock:
            self.processed += n
            self.last_progress = self._clock()
            self._durations.append(seconds)

    def assigned(self, partitions: list[TopicPartition]) -> None:
        """The group gave this stage `partitions` (possibly none)."""
        with self._lock:
            self._assignment = set(partitions)
            self._moved_at = self._clock()  # a new assignment starts the clock afresh
            for tp in list(self._partitions):
                if tp not in self._assignment:
                    self._forget(tp)
            self._connected, self._connection_error = True, None
        self.write()

    def revoked(self) -> None:
        """A rebalance took the assignment away; a new one follows."""
        with self._lock:
            self._assignment = None
            for tp in list(self._partitions):
                self._forget(tp)
        self.write()

    def connection(self, ok: bool, error: str | None = None) -> None:
        with self._lock:
            changed = ok != self._connected
            self._connected, self._connection_error = ok, (None if ok else error)
        if changed:
            self.write()

    def observe(self, offsets: dict[TopicPartition, tuple[int | None, int]]) -> None:
        """Per partition: (committed offset or None, fetch high-water mark)."""
        now = self._clock()
        with self._lock:
            for tp, (committed, high) in offsets.items():
                part = self._partitions.get(tp)
                if part is None:
                    part = self._partitions[tp] = _Partition(committed, high, now)
                elif committed != part.committed:
                    part.committed, part.moved_at = committed, now
                    self._moved_at = now
                part.high = high
                if part.lag == 0:
                    part.lag_since = None
                elif part.lag_since is None:
                    part.lag_since = now
                self._metrics.lag.labels(self.stage, tp[0], str(tp[1])).set(part.lag)
            if not any(p.lag for p in self._partitions.values()):
                self._lag_since = None
            elif self._lag_since is None:
                self._lag_since = now

    def _forget(self, tp: TopicPartition) -> None:
        self._partitions.pop(tp, None)
        with contextlib.suppress(KeyError):
            self._metrics.lag.remove(self.stage, tp[0], str(tp[1]))

    def broken(self, reason: str) -> None:
        with self._lock:
            self.broken_reason = reason
        self._metrics.broken.labels(self.stage).set(1)
        self.write()

    def recovered(self) -> None:
        with self._lock:
            self.broken_reason = None
        self._metrics.broken.labels(self.stage).set(0)
        self.write()

    def degraded(self, reason: str | None) -> None:
        """The stage goes on in a reduced mode for `reason`; None: fully working again."""
        with self._lock:
            self.degraded_reason = reason
        self._metrics.degraded.labels(self.stage).set(0 if reason is None else 1)
        self.write()

    def crashed(self, where: str, correlation_id: str, error: BaseException) -> None:
        """An unexpected exception out of the stage's handler (the event was isolated and dead-lettered)."""
        with self._lock:
            self.crashes += 1
            self.last_crash = {"at": round(self._clock(), 3), "where": where, "correlation_id": correlation_id,
                               "error": f"{type(error).__name__}: {error}"[:300]}
        self.write()

    def restarted(self) -> None:
        with self._lock:
            self.restarts += 1
        self.write()

    # -- what it concludes ------------------------------------------------------------------------
    def stall_bound(self) -> float:
        with self._lock:
            return self._policy.bound(self._durations)

    def stalled(self) -> bool:
        return self.stuck_s() > self.stall_bound()

    def stuck_s(self) -> float:
        """How long the stage has had lag without any committed offset moving."""
        with self._lock:
            if self._lag_since is None:
                return 0.0
            return self._clock() - max(self._moved_at, self._lag_since)

    def live(self) -> bool:
        with self._lock:
            return (self._in_batch_since is not None
                    or self._clock() - self._last_tick <= self._policy.liveness_timeout_s)

    def ready(self) -> bool:
        with self._lock:
            return self._connected and self._assignment is not None

    def state(self) -> str:
        with self._lock:
            if self.broken_reason is not None:
                return "broken"
            if self.stalled():
                return "stalled"
            if self.degraded_reason is not None:
                return "degraded"
            if not self._connected:
                return "disconnected"
            return "ok" if self._assignment is not None else "starting"

    def snapshot(self) -> dict[str, Any]:
        now = self._clock()
        with self._lock:
            stalled = self.stalled()
            return {
                "stage": self.stage, "pid": os.getpid(), "state": self.state(), "live": self.live(),
                "ready": self.ready(), "stalled": stalled, "broken": self.broken_reason,
                "degraded": self.degraded_reason,
                "lag": sum(p.lag for p in self._partitions.values()), "stuck_s": round(self.stuck_s(), 1),
                "partitions": {where(*tp): {"lag": p.lag, "committed": p.committed, "high": p.high,
                                            "stuck_s": round(p.stuck_s(now), 1)}
                               for tp, p in sorted(self._partitions.items())},
                "stall_bound_s": round(self.stall_bound(), 1),
                "in_batch_s": round(now - self._in_batch_since, 1) if self._in_batch_since is not None else None,
                "connection_error": self._connection_error,
                "processed": self.processed,
                "last_progress": round(self.last_progress, 3) if self.last_progress else None,
                "crashes": self.crashes, "restarts": self.restarts, "last_crash": self.last_crash,
                "updated_at": round(now, 3),
            }

    def write(self) -> None:
        """Refresh the health file (infra/ops/health_file.py), if this stage has one."""
        if self._file is not None:
            self._file.write(self.snapshot())

    def remove(self) -> None:
        if self._file is not None:
            self._file.remove()


def overall(snaps: list[dict[str, Any]]) -> str:
    order = ("broken", "stalled", "degraded", "disconnected", "starting", "ok")
    states = {s["state"] for s in snaps}
    return next((s for s in order if s in states), "ok")
