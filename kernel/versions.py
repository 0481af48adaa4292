"""The version rules every store adapter and the indexer share. They are what make redelivery and
reordering harmless:

- A document's row holds the highest version seen; a status for an older version is ignored, and at
  the same version status only moves forward (received < chunked < embedded < failed < indexed <
  deleted).
- A delete at version v removes chunks with version <= v and leaves a tombstone; a finished version v
  removes chunks < v. Both are bounded by version, so they commute with late or repeated writes.
"""

from __future__ import annotations

import dataclasses

from schemas.events import Status

from .ports import DocumentRecord


def accept_status(current: DocumentRecord | None, new: DocumentRecord) -> bool:
    """Whether `new` may replace the stored row `current`."""
    if current is None:
        return True
    if new.version != current.version:
        return new.version > current.version
    return new.status.rank > current.status.rank


def merge_record(current: DocumentRecord | None, new: DocumentRecord) -> DocumentRecord:
    """What to store when `new` is accepted: the new record, keeping the descriptive fields of the same
    version that a later status does not carry (a `deleted` status knows no title, nor its content's type:
    a record without content keeps the content type of the content kept)."""
    if current is None or current.version != new.version:
        return new
    return dataclasses.replace(
        new, chunks=new.chunks or current.chunks, content_hash=new.content_hash or current.content_hash,
        title=new.title or current.title, source=new.source or current.source,
        metadata=new.metadata or current.metadata,
        content_type=new.content_type if new.content_hash else current.content_type)


def superseded(doc: DocumentRecord | None, version: int) -> bool:
    """True when the store already knows a newer version, or a delete at this version or later."""
    if doc is None:
        return False
    return doc.version > version or (doc.status is Status.DELETED and doc.version >= version)


def cleanup_bound(doc: DocumentRecord) -> int:
    """Chunks below this version must not exist given the document's current row."""
    return doc.version + 1 if doc.status is Status.DELETED else doc.version
