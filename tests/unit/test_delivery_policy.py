"""The delivery policy without Kafka: the failure breaker's arithmetic on a fake clock, and what becomes of
a batch when it breaks, probes and recovers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from engine.delivery import BatchPolicy, Breaker
from engine.records import SourceRecord
from engine.serde import encode
from infra.ops.metrics import Metrics
from infra.settings import DeliverySettings, Settings
from kernel.stage import Handler, PerEvent, Stage
from schemas.events import DocumentStatus, Status
from schemas.stages import PIPELINE


def test_the_breaker_opens_on_many_failures_that_dominate_the_window() -> None:
    now = [0.0]
    breaker = Breaker(DeliverySettings(breaker_window_s=60, breaker_min_failures=5, breaker_failure_ratio=0.5),
                      clock=lambda: now[0])
    assert not breaker.record(ok=100, failed=4)  # a few poison events among many good ones
    assert not breaker.record(ok=100, failed=4)  # 8 failures, but 4% of the window
    now[0] = 120.0  # the window moved on
    assert not breaker.record(ok=0, failed=4)  # 4 failures: below the count
    assert breaker.record(ok=1, failed=1)  # 5 of 6: open
    breaker.reset()
    assert not breaker.record(ok=0, failed=1)


def records_of(events: list[BaseModel]) -> list[SourceRecord]:
    return [SourceRecord("t.status.v1", 0, i, None, encode(ev), []) for i, ev in enumerate(events)]


def statuses(*names: str) -> list[BaseModel]:
    return [DocumentStatus(document_id=n, version=1, status=Status.INDEXED, stage="t") for n in names]


def policy(handle: Handler, **delivery: float) -> BatchPolicy:
    settings = Settings(delivery=DeliverySettings(**delivery))  # type: ignore[arg-type]
    return BatchPolicy(settings, Stage(PIPELINE["status"], handle, max_batch=50), Metrics())


def test_a_batch_of_mostly_poison_is_dead_lettered_once_a_probe_shows_the_stage_works() -> None:
    """6 of 8 events raise (the events' fault, not the stage's): the breaker opens, a probe of a good
    event goes through, and the batch then ends with 6 dead letters instead of being held forever."""
    handled: list[str] = []

    def handle(events: Sequence[Any]) -> list[PerEvent]:
        out: list[PerEvent] = []
        for ev in events:
            if ev.document_id.startswith("bad"):
                out.append(KeyError(ev.document_id))
            else:
                handled.append(ev.document_id)
                out.append([])
        return out

    waits: list[float] = []
    done = policy(handle).process(records_of(statuses("bad1", "bad2", "good1", "bad3", "bad4", "good2", "bad5",
                                                      "bad6")), lambda s: waits.append(s) or len(waits) < 10)
    assert done is not None and done.dead_lettered == 6
    assert len(waits) == 1, "one hold, one probe, then done"
    # the batch, the probe (bad1, bad2, then good1 goes through), the batch again
    assert sorted(handled) == ["good1", "good1", "good1", "good2", "good2"]


def test_a_stage_broken_on_everything_holds_until_a_probe_goes_through() -> None:
    fixed = {"yes": False}
    calls = {"n": 0}

    def handle(events: Sequence[Any]) -> list[PerEvent]:
        calls["n"] += 1
        if calls["n"] > 20:
            fixed["yes"] = True  # the fix arrives while the stage probes
        if not fixed["yes"]:
            raise RuntimeError("a bug in this release")
        return [[] for _ in events]

    waits: list[float] = []
    done = policy(handle, probe_interval_s=1, probe_max_s=4).process(
        records_of(statuses(*[f"d{i}" for i in range(10)])), lambda s: waits.append(s) or True)
    assert done is not None and done.dead_lettered == 0 and done.sends == []
    assert waits[:3] == [1, 2, 4] and max(waits) == 4  # probing backs off to its cap


def test_a_stop_while_held_gives_the_batch_up() -> None:
    def handle(events: Sequence[Any]) -> list[PerEvent]:
        raise RuntimeError("a bug in this release")

    assert policy(handle).process(records_of(statuses(*[f"d{i}" for i in range(10)])), lambda s: False) is None


def test_each_step_of_a_batch_is_counted_in_the_cpu_account() -> None:
    metrics = Metrics()
    settings = Settings()
    BatchPolicy(settings, Stage(PIPELINE["status"], lambda events: [[] for _ in events], max_batch=50),
                metrics).process(records_of(statuses("a", "b")), lambda _: True)
    counted = {s.labels["step"] for m in metrics.cpu_seconds.collect() for s in m.samples
               if s.name == "ragbus_cpu_seconds_total"}
    assert counted == {"decode", "handle", "encode"}


def test_a_stage_nobody_waits_on_fetches_with_the_long_wait() -> None:
    local = Settings(kafka={"fetch_wait_max_ms": 10})  # type: ignore[arg-type]
    assert local.fetch_wait_ms(PIPELINE["answerer"].waited_on) == 10
    assert local.fetch_wait_ms(PIPELINE["status"].waited_on) == 500
    remote = Settings(kafka={"fetch_wait_max_ms": 2000})  # type: ignore[arg-type]
    assert remote.fetch_wait_ms(PIPELINE["status"].waited_on) == 2000  # never shorter than configured
