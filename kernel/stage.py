"""What a stage is to its runner: a function from a batch of typed events to typed outputs.

Business logic never sees offsets or clients. A stage returns, per input event, either the events to
publish or the exception that event raised (so one bad event in a micro-batch does not fail the
others). Raising RetryableError fails the whole batch: the runner backs off and retries it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from kernel.errors import RetryableError
from schemas.topics import TopicSpec


@dataclass(frozen=True)
class Out:
    topic: TopicSpec
    key: bytes
    event: BaseModel


PerEvent = list[Out] | Exception
BatchHandler = Callable[[Sequence[Any]], list[PerEvent]]
FailureHook = Callable[[Any, Exception], list[Out]]


@dataclass(frozen=True)
class StreamStage:
    name: str
    source: TopicSpec
    handle: BatchHandler
    #: Outputs to publish when an event is dead-lettered (e.g. a `failed` status for `ingest --wait`).
    on_failure: FailureHook | None = None
    max_batch: int = 1
    window_s: float = 0.0
    max_attempts: int = 5


def per_event(fn: Callable[[Any], list[Out]]) -> BatchHandler:
    """Lift a one-event function into a batch handler that isolates each event's failure."""

    def handle(events: Sequence[Any]) -> list[PerEvent]:
        results: list[PerEvent] = []
        for event in events:
            try:
                results.append(fn(event))
            except RetryableError:
                raise  # the whole batch backs off and is retried
            except Exception as exc:  # reported as this event's failure: it is dead-lettered, the rest go on
                results.append(exc)
        return results

    return handle
