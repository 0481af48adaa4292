"""Stall detection through a real consumer runner on the local broker: an idle stage that receives work
and a batch slower than its predecessors are not stalls; a sink that hangs is reported within the
bound, and recovers when the sink returns."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from engine.clients import ensure_topics
from infra.ops.health import Health, StallPolicy
from infra.ops.metrics import Metrics
from kernel.stage import PerEvent, Stage
from schemas.stages import PIPELINE

from .helpers import runner_for, wait_until
from .test_delivery import publish_statuses, run

pytestmark = pytest.mark.broker
MIN_S, FACTOR = 2.0, 3.0


class Sink:
    """A status sink whose batches take `delay` seconds and which hangs while `flowing` is clear."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.flowing = threading.Event()
        self.flowing.set()
        self.done: list[str] = []

    def handle(self, events: Sequence[Any]) -> list[PerEvent]:
        time.sleep(self.delay)
        self.flowing.wait()
        self.done += [e.document_id for e in events]
        return [[] for _ in events]


def watch(health: Health, seconds: float, until: Any = None) -> list[float]:
    """Sample health for `seconds` (or until `until()`); the moments it said stalled."""
    stalls, start = [], time.monotonic()
    while time.monotonic() - start < seconds and not (until and until()):
        if health.stalled():
            stalls.append(round(time.monotonic() - start, 1))
        time.sleep(0.1)
    return stalls


def test_only_the_hung_sink_is_reported_stalled(broker: str, settings_factory) -> None:  # type: ignore[no-untyped-def]
    settings = settings_factory(broker, RAGBUS_KAFKA_POLL_BATCH="2")
    ensure_topics(settings)
    sink, metrics = Sink(), Metrics(stages=["status"])
    health = Health("status", metrics, None, StallPolicy(min_s=MIN_S, factor=FACTOR))
    stop, thread = run(runner_for(settings, Stage(PIPELINE["status"], sink.handle, max_batch=2,
                                                  window_s=0.05), metrics, health))
    try:
        wait_until(health.ready, 30, "the runner to join its group")
        publish_statuses(settings, ["a0", "a1"])
        wait_until(lambda: len(sink.done) == 2, 30, "the first events")

        # false alarm 1: idle for longer than the bound, then work arrives
        assert watch(health, MIN_S + 2.5) == []
        sink.delay = 1.0
        publish_statuses(settings, [f"b{i}" for i in range(8)])
        assert watch(health, 30, until=lambda: len(sink.done) == 10) == []
        assert health.stall_bound() == pytest.approx(max(MIN_S, FACTOR * max_batch(health)), rel=0.01)

        # false alarm 2: one batch slower than the old fixed bound (MIN_S) but within the stage's own
        sink.delay = MIN_S + 0.5
        publish_statuses(settings, ["c0", "c1"])
        assert watch(health, 30, until=lambda: len(sink.done) == 12) == []

        # a real stall: the sink hangs
        sink.delay, bound = 0.0, health.stall_bound()
        sink.flowing.clear()
        hung_at = time.monotonic()
        publish_statuses(settings, ["d0"])
        wait_until(health.stalled, bound + 10, "the hung sink to be reported stalled")
        reported_after = time.monotonic() - hung_at
        assert bound < reported_after <= bound + 3, (bound, reported_after)
        snap = health.snapshot()
        assert snap["state"] == "stalled" and snap["live"] and snap["in_batch_s"] is not None
        assert metrics.registry.get_sample_value("ragbus_stage_stalled", {"stage": "status"}) == 1

        sink.flowing.set()  # the sink returns
        wait_until(lambda: not health.stalled() and "d0" in sink.done, 30, "the stage to recover")
        assert health.state() == "ok"
    finally:
        sink.flowing.set()
        stop.set()
        thread.join(20)


def max_batch(health: Health) -> float:
    return max(health._durations)
