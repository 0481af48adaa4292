"""status.v1 -> document store (at-least-once; forward-only, so redelivery and reordering are harmless).

The faust stages cannot write to stores (they are Kafka -> Kafka); they publish status events and this
sink applies them under the store's version rules.
"""

from __future__ import annotations

from typing import Any

from infra.kafka.clients import SourceRecord
from kernel.ports import DocumentRecord, DocumentStore
from schemas.events import DocumentStatus

STAGE = "status"


class StatusSink:
    def __init__(self, store: DocumentStore) -> None:
        self._store = store
        self._pending: list[DocumentStatus] = []

    def add(self, event: Any, record: SourceRecord) -> None:
        self._pending.append(event)

    def discard(self) -> None:
        self._pending = []

    def flush(self) -> list[tuple[SourceRecord, Any, Exception]]:
        for ev in self._pending:
            self._store.apply_status(DocumentRecord(ev.tenant, ev.document_id, ev.version, ev.status, ev.chunks,
                                                    ev.error))
        self._pending = []
        return []
