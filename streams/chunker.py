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

Index generations (kernel/generations.py): a document is chunked once per live generation, with that
generation's chunk settings, and its parts name their generation. Its content is kept in the document store's
content-addressed store (`keep`; content that came by `content_ref` is there already), which is what a rebuild
reads: a `document.reindex` event names the generation to chunk into and the kept content.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from chunking.content import accept
from chunking.splitter import Chunker
from infra.ops import logs
from kernel.errors import ConfigurationError, FetchError, PoisonMessageError
from kernel.generations import Generation, Lanes
from kernel.ports import ContentFetcher, FetchedContent
from kernel.stage import Out, PerEvent, Stage, failed_status, per_event
from schemas.events import (
    CHUNKS_PER_PART,
    DOCUMENT_MAX_BYTES,
    ChunksProduced,
    ContentRef,
    ContentType,
    DocumentAclChanged,
    DocumentArrived,
    DocumentDeleted,
    DocumentReindex,
    DocumentStatus,
    Status,
    content_hash,
)
from schemas.stages import CHUNKER
from schemas.topics import TOPICS, document_key

log = logs.get(__name__)
ContentLoader = Callable[[ContentRef], bytes]
ContentKeeper = Callable[[bytes], ContentRef]
Event = DocumentArrived | DocumentDeleted | DocumentAclChanged | DocumentReindex


class NoFetcher:
    """The fetcher when none is configured: every URL is refused, saying how to enable it."""

    def fetch(self, url: str) -> FetchedContent:
        raise FetchError(f"content_url {url.split('?', 1)[0]}: this ragbus reads no content by URL; its operator "
                         "can allow sources in RAGBUS_FETCH_ALLOWED_URLS or RAGBUS_FETCH_FILE_ROOTS")


def _content(event: DocumentArrived | DocumentReindex, load: ContentLoader, fetch: ContentFetcher) -> str | bytes:
    if isinstance(event, DocumentArrived) and event.text is not None:
        return event.text
    if isinstance(event, DocumentArrived) and event.content_url is not None:
        fetched = fetch.fetch(event.content_url)
        return accept(event.content_type, fetched, event.content_url.split("?", 1)[0], event.content_sha256)
    ref = ContentRef(sha256=event.content_sha256, size=0) if isinstance(event, DocumentReindex) else event.content_ref
    assert ref is not None  # guaranteed by the model validator
    if ref.size > DOCUMENT_MAX_BYTES:
        raise PoisonMessageError(f"document is {ref.size} bytes, over the {DOCUMENT_MAX_BYTES} limit")
    try:
        data = load(ref)
    except KeyError as exc:
        raise PoisonMessageError(f"claim-check content {ref.sha256} is not in the store") from exc
    if len(data) > DOCUMENT_MAX_BYTES:
        raise PoisonMessageError(f"document is {len(data)} bytes, over the {DOCUMENT_MAX_BYTES} limit")
    if content_hash(data) != ref.sha256:
        raise PoisonMessageError("claim-check content does not match its sha256")
    try:
        return data if event.content_type is ContentType.PDF else data.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise PoisonMessageError(f"claim-check content is not UTF-8 text: {exc.reason}") from exc


def _parts(event: DocumentArrived | DocumentReindex, version: int, digest: str, content: str | bytes,
           chunker: Chunker, generation: str, generations: list[str]) -> tuple[list[Out], int]:
    chunks, sections = chunker.split(event.content_type, content)
    parts = [chunks[i:i + CHUNKS_PER_PART] for i in range(0, len(chunks), CHUNKS_PER_PART)]
    first_part: dict[int, int] = {}  # a section travels with its first chunk
    for c in chunks:
        first_part.setdefault(c.section, c.index // CHUNKS_PER_PART)
    access = ({"acl": event.acl, "acl_version": event.acl_version, "document_occurred_at": event.occurred_at}
              if isinstance(event, DocumentArrived) else {})  # a rebuild stamps the ACL in force, and is not fresh
    key = document_key(event.tenant, event.document_id)
    return [
        Out(TOPICS.chunks, key, ChunksProduced(
            tenant=event.tenant, correlation_id=event.correlation_id or str(event.event_id),
            document_id=event.document_id, version=version, content_hash=digest, title=event.title,
            source=event.source, metadata=event.metadata, part=n, parts=len(parts), total_chunks=len(chunks),
            generation=generation, generations=generations, content_type=event.content_type, chunks=part,
            sections=[s for s in sections if first_part[s.section] == n], **access))
        for n, part in enumerate(parts)
    ], len(chunks)


def chunk_event(event: Event, chunkers: Chunker | Sequence[tuple[Generation, Chunker]], load: ContentLoader,
                fetch: ContentFetcher | None = None, keep: ContentKeeper | None = None) -> list[Out]:
    """The event's outputs for every live generation in `chunkers` (serving first; one Chunker: the first
    generation only)."""
    if isinstance(chunkers, Chunker):
        chunkers = Lanes.fixed(chunkers).each()
    key = document_key(event.tenant, event.document_id)
    if isinstance(event, DocumentDeleted | DocumentAclChanged):
        return [Out(TOPICS.chunks, key, event)]
    if isinstance(event, DocumentReindex):
        chunker = next((c for g, c in chunkers if g.name == event.generation), None)
        if chunker is None:  # cancelled or dropped since the rebuild published it
            log.info("reindex event for a generation that is not live; skipped", generation=event.generation,
                     document_id=event.document_id)
            return []
        content = _content(event, load, fetch or NoFetcher())
        return _parts(event, event.version, event.content_sha256, content, chunker, event.generation,
                      [event.generation])[0]
    content = _content(event, load, fetch or NoFetcher())
    data = content.encode("utf-8") if isinstance(content, str) else content
    if keep is not None and event.content_ref is None:
        keep(data)  # what a rebuild of the index reads (content-addressed: a redelivery writes nothing new)
    version = event.effective_version
    digest = content_hash(data)
    if not chunkers:
        raise ConfigurationError("the chunker has no live index generation")
    outs: list[Out] = []
    serving_chunks = 0
    for n, (generation, chunker) in enumerate(chunkers):
        parts, count = _parts(event, version, digest, content, chunker, generation.name, [g.name for g, _ in chunkers])
        outs += parts
        if n == 0:
            serving_chunks = count
    outs.append(Out(TOPICS.status, key, DocumentStatus(
        tenant=event.tenant, correlation_id=event.correlation_id or str(event.event_id),
        document_id=event.document_id, version=version, status=Status.CHUNKED, stage=CHUNKER.name,
        chunks=serving_chunks)))
    return outs


def handler(lanes: Lanes[Chunker], load: ContentLoader, fetch: ContentFetcher | None,
            keep: ContentKeeper | None) -> Callable[[Sequence[Event]], list[PerEvent]]:
    """Per batch: the live generations read once, then each event on its own (its failure its own)."""
    def handle(events: Sequence[Event]) -> list[PerEvent]:
        chunkers = lanes.each()

        def one(event: Event) -> list[Out]:
            return chunk_event(event, chunkers, load, fetch, keep)
        return per_event(one)(events)
    return handle


def stage(lanes: Lanes[Chunker] | Chunker, load: ContentLoader, fetch: ContentFetcher | None = None,
          keep: ContentKeeper | None = None) -> Stage[Event]:
    return Stage(
        CHUNKER, handle=handler(Lanes.fixed(lanes) if isinstance(lanes, Chunker) else lanes, load, fetch, keep),
        on_failure=lambda ev, exc: failed_status(ev, exc, CHUNKER.name),
        max_batch=16, window_s=0.01, key=lambda ev: document_key(ev.tenant, ev.document_id),
        # who may read a document is not re-keyed: an ACL change keyed as another document is refused (and an
        # operator's reindex event keyed wrongly is a bug to see)
        strict_key=lambda ev: isinstance(ev, DocumentAclChanged | DocumentReindex),
    )
