"""`ingest --wait` follows progress, not a fixed clock: it waits as long as the pipeline moves, and gives up
once nothing has moved for the idle timeout."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ragbus import client
from schemas.events import DocumentArrived, DocumentStatus, Status


class ScriptedTail:
    """Each poll returns the next scripted list of statuses and advances the fake clock by `step_s`."""

    def __init__(self, script: list[list[DocumentStatus]], clock: list[float], step_s: float) -> None:
        self._script, self._clock, self._step = script, clock, step_s

    def poll(self, timeout_s: float) -> Iterator[Any]:
        self._clock[0] += self._step
        yield from (self._script.pop(0) if self._script else [])


def status(doc: str, value: Status) -> DocumentStatus:
    return DocumentStatus(document_id=doc, version=1, status=value, stage="indexer")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(client.time, "monotonic", lambda: now[0])
    return now


def test_a_long_ingest_that_keeps_moving_is_followed_to_its_end(clock: list[float]) -> None:
    ours = DocumentArrived(document_id="late", version=1, text="x")
    # an hour of other documents finishing, one every 60 s, before ours: longer than any fixed time-out
    script = [[status(f"other-{i}", Status.INDEXED)] for i in range(60)] + [[status("late", Status.INDEXED)]]
    final = client.wait_final(ScriptedTail(script, clock, 60.0), [ours], idle_timeout_s=120)  # type: ignore[arg-type]
    assert set(final) == {"late"}


def test_a_pipeline_that_stops_moving_is_given_up_after_the_idle_timeout(clock: list[float]) -> None:
    ours = DocumentArrived(document_id="stuck", version=1, text="x")
    script = [[status("stuck", Status.CHUNKED)]]  # progress once, then nothing
    started = clock[0]
    final = client.wait_final(ScriptedTail(script, clock, 0.5), [ours], idle_timeout_s=120)  # type: ignore[arg-type]
    assert final == {}
    assert 120 <= clock[0] - started <= 122


def test_an_overall_timeout_still_applies_when_given(clock: list[float]) -> None:
    ours = DocumentArrived(document_id="slow", version=1, text="x")
    script = [[status(f"other-{i}", Status.INDEXED)] for i in range(100)]
    started = clock[0]
    final = client.wait_final(ScriptedTail(script, clock, 10.0), [ours], 300, idle_timeout_s=120)  # type: ignore[arg-type]
    assert final == {} and clock[0] - started <= 310
