"""documents.v1 -> chunks.v1 + status.v1 (at-least-once; outputs are deterministic per input).

Chunks a document version into ordered parts of at most CHUNKS_PER_PART chunks, each carrying the
document's `acl` statement for the indexer. Deletes and ACL changes pass through unchanged so they stay
ordered with the document's other events on its key.

Content comes inline, from ragbus's claim-check store (`content_ref`), or by reference (`content_url`),
read through the ContentFetcher port from places the operator allowed and checked against the event's
content_type (chunking/content.py). A URL is read once per delivery: a publisher that wants a
version's content fixed pins it with `content_sha256` (or never changes what a versioned URL serves).

Every output is keyed `tenant/document_id`, whatever key the input had: a keyless or wrongly keyed
document event is re-keyed here, before any stage that needs per-document order (the chunker itself
keeps no per-document state, and versions order what it emits).
"""

from __future__ import annotations

from collections.abc import Callable

from chunking.content import accept
from chunking.splitter import Chunker
from kernel.errors import FetchError, PoisonMessageError
from kernel.ports import ContentFetcher, FetchedContent
from kernel.stage import Out, Stage, failed_status, per_event
from schemas.events import (
    CHUNKS_PER_PART,
    DOCUMENT_MAX_BYTES,
    ChunksProduced,
    ContentRef,
    ContentType,
    DocumentAclChanged,
    DocumentArrived,
    DocumentDeleted,
    DocumentStatus,
    Status,
    content_hash,
)
from schemas.stages import CHUNKER
from schemas.topics import TOPICS, document_key

ContentLoader = Callable[[ContentRef], bytes]


class NoFetcher:
    """The fetcher when none is configured: every URL is refused, saying how to enable it."""

    def fetch(self, url: str) -> FetchedContent:
        raise FetchError(f"content_url {url.split('?', 1)[0]}: this ragbus reads no content by URL; its operator "
                         "can allow sources in RAGBUS_FETCH_ALLOWED_URLS or RAGBUS_FETCH_FILE_ROOTS")


def _content(event: DocumentArrived, load: ContentLoader, fetch: ContentFetcher) -> str | bytes:
    if event.text is not None:
        return event.text
    if event.content_url is not None:
        fetched = fetch.fetch(event.content_url)
        return accept(event.content_type, fetched, event.content_url.split("?", 1)[0], event.content_sha256)
    assert event.content_ref is not None  # guaranteed by the model validator
    if event.content_ref.size > DOCUMENT_MAX_BYTES:
        raise PoisonMessageError(f"document is {event.content_ref.size} bytes, over the {DOCUMENT_MAX_BYTES} limit")
    try:
        data = load(event.content_ref)
    except KeyError as exc:
        raise PoisonMessageError(f"claim-check content {event.content_ref.sha256} is not in the store") from exc
    if content_hash(data) != event.content_ref.sha256:
        raise PoisonMessageError("claim-check content does not match its sha256")
    return data if event.content_type is ContentType.PDF else data.decode("utf-8", errors="strict")


def chunk_event(event: DocumentArrived | DocumentDeleted | DocumentAclChanged, chunker: Chunker,
                load: ContentLoader, fetch: ContentFetcher | None = None) -> list[Out]:
    key = document_key(event.tenant, event.document_id)
    if isinstance(event, DocumentDeleted | DocumentAclChanged):
        return [Out(TOPICS.chunks, key, event)]
    try:
        content = _content(event, load, fetch or NoFetcher())
    except UnicodeDecodeError as exc:
        raise PoisonMessageError(f"claim-check content is not UTF-8 text: {exc.reason}") from exc
    chunks, sections = chunker.split(event.content_type, content)
    version = event.effective_version
    digest = content_hash(content.encode("utf-8") if isinstance(content, str) else content)
    parts = [chunks[i:i + CHUNKS_PER_PART] for i in range(0, len(chunks), CHUNKS_PER_PART)]
    first_part: dict[int, int] = {}  # a section travels with its first chunk
    for c in chunks:
        first_part.setdefault(c.section, c.index // CHUNKS_PER_PART)
    envelope = {"tenant": event.tenant, "correlation_id": event.correlation_id or str(event.event_id)}
    outs = [
        Out(TOPICS.chunks, key, ChunksProduced(
            **envelope, document_id=event.document_id, version=version, content_hash=digest, title=event.title,
            source=event.source, metadata=event.metadata, part=n, parts=len(parts), total_chunks=len(chunks),
            document_occurred_at=event.occurred_at, acl=event.acl, acl_version=event.acl_version, chunks=part,
            sections=[s for s in sections if first_part[s.section] == n]))
        for n, part in enumerate(parts)
    ]
    outs.append(Out(TOPICS.status, key, DocumentStatus(
        **envelope, document_id=event.document_id, version=version, status=Status.CHUNKED, stage=CHUNKER.name,
        chunks=len(chunks))))
    return outs


def stage(chunker: Chunker, load: ContentLoader,
          fetch: ContentFetcher | None = None) -> Stage[DocumentArrived | DocumentDeleted | DocumentAclChanged]:
    return Stage(
        CHUNKER, handle=per_event(lambda ev: chunk_event(ev, chunker, load, fetch)),
        on_failure=lambda ev, exc: failed_status(ev, exc, CHUNKER.name),
        max_batch=16, window_s=0.01, key=lambda ev: document_key(ev.tenant, ev.document_id),
        # who may read a document is not re-keyed: an ACL change keyed as another document is refused
        strict_key=lambda ev: isinstance(ev, DocumentAclChanged),
    )
