"""status.v1 -> document store (at-least-once; forward-only, so redelivery and reordering are harmless).

The faust stages cannot write to stores (they are Kafka -> Kafka); they publish status events and this
stage applies them under the version rules. The indexer writes `indexed` and `deleted` itself (it has
to: finishing or deleting a version cleans up older chunks under the same rules), so those are skipped
here rather than written a second time.
"""

from __future__ import annotations

from collections.abc import Sequence

from kernel.ports import DocumentRecord, DocumentStore
from kernel.stage import PerEvent, Stage
from schemas.events import DocumentStatus, Status
from schemas.stages import INDEXER, STATUS

#: Statuses whose producer already applied them to the store.
APPLIED_BY_PRODUCER = {(INDEXER.name, Status.INDEXED), (INDEXER.name, Status.DELETED)}


def apply_statuses(store: DocumentStore, events: Sequence[DocumentStatus]) -> list[PerEvent]:
    for ev in events:  # an ACL change's status is a report: the indexer keeps ACLs (DocumentStore.apply_acl)
        if ev.about == "content" and (ev.stage, ev.status) not in APPLIED_BY_PRODUCER:
            store.apply_status(DocumentRecord(ev.tenant, ev.document_id, ev.version, ev.status, ev.chunks, ev.error))
    return [[] for _ in events]


def stage(store: DocumentStore, max_batch: int, window_s: float) -> Stage[DocumentStatus]:
    return Stage(STATUS, handle=lambda events: apply_statuses(store, events), max_batch=max_batch, window_s=window_s)
