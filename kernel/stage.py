"""The stage contract: a stage is a function from a batch of typed events to typed outputs, for a stage the
registry declares (schemas/stages.py: its name, the topic it reads, the topics it writes).

A runner (engine/) owns consumers, producers, offsets and commits; a stage never sees them and
can be called in a unit test with plain events. `handle(events)` returns, per input event and in
order, either the events to publish for it (`list[Out]`) or the exception that event raised, so one
bad event in a micro-batch does not fail the others. Raising instead fails the whole batch, and the
runner's delivery policy decides what that means by the exception's type:

- RetryableError: transient; back off (honouring `retry_after`) and run the batch again;
- ConfigurationError: the stage cannot work until an operator acts; it stops taking events;
- anything else: unexpected; the events are run one at a time so the error lands on the event that
  raises it, and that event alone is dead-lettered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic

from pydantic import BaseModel
from typing_extensions import TypeVar

from kernel.errors import ConfigurationError, RetryableError
from schemas.events import (
    ChunksEmbedded,
    ChunksProduced,
    DocumentAclChanged,
    DocumentArrived,
    DocumentDeleted,
    DocumentReindex,
    DocumentStatus,
    Status,
)
from schemas.stages import PIPELINE, StageSpec
from schemas.topics import TOPICS, TopicSpec, document_key

#: The events a stage consumes. A runner that runs any stage (the delivery policy) writes plain `Stage`, which
#: is `Stage[Any]`: it only passes decoded events from the stage's topic to the stage's own functions.
E = TypeVar("E", bound=BaseModel, default=Any)
#: The events of the document pipeline, whose failures are reported as a `failed` document status.
DocumentEvent = (DocumentArrived | DocumentDeleted | DocumentAclChanged | DocumentReindex | ChunksProduced
                 | ChunksEmbedded)


@dataclass(frozen=True)
class Out:
    """An event to publish, on `topic` under `key`."""

    topic: TopicSpec
    key: bytes
    event: BaseModel


PerEvent = list[Out] | Exception
#: Per event, in order: the outputs to publish, or the exception that event raised.
Handler = Callable[[Sequence[E]], list[PerEvent]]
#: Outputs to publish when an event is dead-lettered (e.g. a `failed` status for `ingest --wait`).
FailureHook = Callable[[E, Exception], list[Out]]
#: Publishes at once, before the batch is finished (streamed answer deltas); the runner provides it.
Emit = Callable[[Out], None]


@dataclass(frozen=True)
class Stage(Generic[E]):
    #: Its declaration: a Stage is built only for a declared stage (anything else is refused at once).
    spec: StageSpec
    handle: Handler[E]
    on_failure: FailureHook[E] | None = None
    #: Events handed to `handle` at most at once, and how long after a batch's first event the runner
    #: may wait for more (0: only what already arrived, so a lone event is handled at once).
    max_batch: int = 1
    window_s: float = 0.0
    #: The key each source event should have arrived with (None: any). A record keyed otherwise is still
    #: handled (the stage keys its outputs itself); the runner counts and logs it, so publishers can fix it.
    key: Callable[[E], bytes] | None = None
    #: Events whose record must carry exactly `key` when it carries one (a keyless record is still re-keyed):
    #: one keyed otherwise is dead-lettered instead of handled (a permission change keyed as another document).
    strict_key: Callable[[E], bool] | None = None
    #: Hand a batch to `handle` in slices of about this many bytes of input (0: the whole batch at once), the
    #: smallest documents first: a short document's outputs then leave before a long one's are computed, instead
    #: of waiting behind the whole batch (engine.delivery.slices). Only per-key order is kept, which is all the
    #: topics promise.
    slice_bytes: int = 0

    def __post_init__(self) -> None:
        if not PIPELINE.declares(self.spec):
            raise ValueError(f"the {self.spec.name!r} stage is not declared: declare it in schemas/stages.py and bind "
                             "its factory in ragbus/registry.py")

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def source(self) -> TopicSpec:
        return self.spec.reads


def per_event(fn: Callable[[E], list[Out]]) -> Handler[E]:
    """Lift a one-event function into a batch handler that keeps each event's failure to itself."""

    def handle(events: Sequence[E]) -> list[PerEvent]:
        results: list[PerEvent] = []
        for event in events:
            try:
                results.append(fn(event))
            except (RetryableError, ConfigurationError):
                raise  # about the stage, not this event: the whole batch waits
            except Exception as exc:  # this event's failure: it is dead-lettered, the rest go on
                results.append(exc)
        return results

    return handle


def failed_status(event: DocumentEvent, exc: Exception, stage: str) -> list[Out]:
    """A `failed` status for a dead-lettered document event, so waiters and the store learn why (a delete that
    fails has no version to mark failed; a rebuild's reindex event is about one index generation, not the
    document, which stays as it is: both are dead-lettered only)."""
    if isinstance(event, DocumentDeleted | DocumentReindex):
        return []
    if isinstance(event, DocumentAclChanged):  # about the ACL change, not the content: the document stays as it is
        return [Out(TOPICS.status, document_key(event.tenant, event.document_id), DocumentStatus(
            tenant=event.tenant, correlation_id=event.correlation_id, document_id=event.document_id,
            version=event.acl_version, status=Status.FAILED, stage=stage, about="acl",
            error=f"{type(exc).__name__}: {exc}"[:2000]))]
    version = event.effective_version if isinstance(event, DocumentArrived) else event.version
    return [Out(TOPICS.status, document_key(event.tenant, event.document_id), DocumentStatus(
        tenant=event.tenant, correlation_id=event.correlation_id, document_id=event.document_id, version=version,
        status=Status.FAILED, stage=stage, error=f"{type(exc).__name__}: {exc}"[:2000]))]
