"""The wire contract: every event ragbus publishes or consumes, as frozen pydantic v2 models.

All events share one envelope (event id, schema version, time, correlation id, tenant). Readers are
tolerant (`extra="ignore"`): a producer may add fields without breaking older consumers. A breaking
change bumps `schema_version`; the reader for the old version stays until its topic is drained.

Every size is bounded here, at the edge, so no stage can be handed an unbounded payload.
No I/O in this module.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

SCHEMA_VERSION = 1

#: Inline text up to this many UTF-8 bytes travels in the event; larger content travels by reference
#: (`content_url`, or ragbus's own claim-check `content_ref`). Kafka's default message limit is 1 MB;
#: this leaves room for the envelope.
INLINE_TEXT_MAX_BYTES = 512 * 1024
#: Limit on one claim-checked document's content (content by URL has its own setting, RAGBUS_FETCH_MAX_BYTES).
DOCUMENT_MAX_BYTES = 16 * 1024 * 1024
#: Schemes a `content_url` may use; which hosts, buckets and directories are readable is the operator's
#: choice (RAGBUS_FETCH_*), and nothing is readable until configured.
URL_SCHEMES = ("https", "s3", "file")
#: Chunks per ChunksProduced/ChunksEmbedded message: keeps each message far below 1 MB with vectors.
CHUNKS_PER_PART = 64
QUESTION_MAX_CHARS = 4_000
#: The lead of a section entry (its keyword text) is at most this long: bounds a part's size while
#: covering most sections whole (keyword search over whole sections beat it over chunks; bench/RESULTS.md).
SECTION_TEXT_MAX_CHARS = 4_000
#: 100 so that `ragbus eval` can measure recall@100 through the bus.
TOP_K_MAX = 100
METADATA_MAX_KEYS = 32
#: Bounds of an access-control list (a document's `acl`, a query's `principals`): entries, and characters each.
ACL_MAX_ENTRIES = 1024
PRINCIPAL_MAX_CHARS = 256
CONVERSATION_ID_MAX_CHARS = 256

NAMESPACE = uuid.UUID("6f1b2a3c-58d4-4f0e-9a57-2c1b7e0d9a11")


def _no_control_chars(value: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters")
    return value


def _printable(value: str) -> str:
    if not value.isprintable():
        raise ValueError("must be printable text (no control characters, tabs or line breaks)")
    return value


def _content_url(value: str) -> str:
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("must not contain spaces or control characters (percent-encode them)")
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    if scheme not in URL_SCHEMES:
        raise ValueError(f"expected an https://, s3:// or file:// URL, got scheme {parts.scheme or '(none)'!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials (user:password@): ragbus reads sources with its own "
                         "configured credentials")
    _ = parts.port  # raises ValueError for a port that is not a number in range
    if scheme in ("https", "s3") and not parts.hostname:
        raise ValueError(f"a {scheme}:// URL needs a {'bucket' if scheme == 's3' else 'host'}: {scheme}://NAME/...")
    if scheme == "s3" and not parts.path.strip("/"):
        raise ValueError("an s3:// URL needs an object key: s3://BUCKET/KEY")
    if scheme == "file" and (parts.netloc not in ("", "localhost") or not parts.path.startswith("/")):
        raise ValueError("a file:// URL names an absolute local path: file:///path/to/file")
    return value


TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
QUERY_ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
META_KEY_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
#: What each pattern means, in words, for error messages a publisher can act on.
PATTERN_MEANINGS = {
    TENANT_PATTERN: "1 to 63 lowercase letters, digits, '_' or '-', starting with a letter or digit",
    QUERY_ID_PATTERN: "printable text without control characters",
    SHA256_PATTERN: "a sha256 as 64 lowercase hex digits",
    META_KEY_PATTERN: "1 to 64 letters, digits, '_', '.' or '-'",
}

Tenant = Annotated[str, StringConstraints(pattern=TENANT_PATTERN)]
DocumentId = Annotated[
    str, StringConstraints(min_length=1, max_length=512, strip_whitespace=True), AfterValidator(_no_control_chars)
]
#: A client's own query id, any printable text (`faq/general#3`): it is given back unchanged on the answer.
QueryId = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=QUERY_ID_PATTERN)]
Sha256 = Annotated[str, StringConstraints(pattern=SHA256_PATTERN)]
ContentUrl = Annotated[str, StringConstraints(max_length=2048), AfterValidator(_content_url)]
ShortText = Annotated[str, StringConstraints(max_length=1024)]
MetaKey = Annotated[str, StringConstraints(pattern=META_KEY_PATTERN)]
MetaValue = Annotated[str, StringConstraints(max_length=512)] | int | float | bool
Metadata = Annotated[dict[MetaKey, MetaValue], Field(max_length=METADATA_MAX_KEYS)]
#: Who someone is, as the asking system names them: `user:alice`, `group:eng`, any printable string.
Principal = Annotated[str, StringConstraints(min_length=1, max_length=PRINCIPAL_MAX_CHARS), AfterValidator(_printable)]
Principals = Annotated[list[Principal], Field(max_length=ACL_MAX_ENTRIES)]
#: A conversation's id, as the asking system names it (a chat session's id): any printable text up to 256 characters.
ConversationId = Annotated[str, StringConstraints(min_length=1, max_length=CONVERSATION_ID_MAX_CHARS),
                           AfterValidator(_printable)]


def utcnow() -> datetime:
    return datetime.now(UTC)


def _in_generation(generation: str) -> str:
    return "" if generation == FIRST_GENERATION else f"\x1f@{generation}"


def chunk_uuid(tenant: str, document_id: str, version: int, index: int, generation: str = "g1") -> str:
    """Deterministic chunk id: a redelivery writes the same id, so writes are idempotent. Ids differ per index
    generation (kernel/generations.py), the first generation's being the ids from before generations."""
    return str(uuid.uuid5(NAMESPACE, f"{tenant}\x1f{document_id}\x1f{version}\x1f{index}{_in_generation(generation)}"))


def section_uuid(tenant: str, document_id: str, version: int, section: int, generation: str = "g1") -> str:
    """Deterministic id of a section entry, in the same namespace as chunks but never equal to one."""
    return str(uuid.uuid5(NAMESPACE, f"{tenant}\x1f{document_id}\x1f{version}\x1fsection\x1f{section}"
                                     f"{_in_generation(generation)}"))


#: The first index generation's name (kernel.generations.FIRST; schemas imports nothing of ragbus's own).
FIRST_GENERATION = "g1"
GENERATION_PATTERN = r"^g[1-9][0-9]{0,5}$"
Generation = Annotated[str, StringConstraints(pattern=GENERATION_PATTERN)]


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ContentType(StrEnum):
    TEXT = "text/plain"
    MARKDOWN = "text/markdown"
    HTML = "text/html"
    PDF = "application/pdf"


class Envelope(BaseModel):
    """Fields every event carries."""

    model_config = ConfigDict(frozen=True, extra="ignore", use_attribute_docstrings=True)

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    """Unique per event; a re-sent copy of an event keeps it, so subscribers deduplicate on it."""
    schema_version: Literal[1] = 1  # SCHEMA_VERSION
    """The contract version this event follows (docs/schemas.md)."""
    occurred_at: datetime = Field(default_factory=utcnow)
    """When the event happened, ISO 8601 with a timezone (`2026-01-15T09:30:00Z`)."""
    correlation_id: Annotated[str, StringConstraints(max_length=128)] = ""
    """Free text that ties related events together (ragbus copies it to the events it derives)."""
    tenant: Tenant = "default"
    """Whose data this is; every read and write stays inside one tenant."""

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("expected a date-time with a timezone, such as 2026-01-15T09:30:00Z or an offset")
        return value

    def micros(self) -> int:
        return int(self.occurred_at.timestamp() * 1_000_000)


class ContentRef(BaseModel):
    """Claim-check: content stored in the document store, referenced by its sha256."""

    model_config = ConfigDict(frozen=True, extra="ignore", use_attribute_docstrings=True)

    sha256: Sha256
    """sha256 (hex) of the stored content."""
    size: Annotated[int, Field(ge=0, le=DOCUMENT_MAX_BYTES)]


class DocumentArrived(Envelope):
    """A document (new or updated) to index. Key: `tenant/document_id`.

    `version` orders updates of one document: upstream may set it (a revision number or timestamp);
    when absent, the event time in microseconds is used. A higher version always wins.

    The content is exactly one of: `text` (inline, up to 512 KiB of UTF-8, not PDF), `content_url`
    (https://, s3:// or file://, read by ragbus from places its operator allowed; any size up to
    RAGBUS_FETCH_MAX_BYTES, PDFs too; `content_sha256` optionally pins the bytes), or `content_ref`
    (ragbus's own claim-check store, used by `ragbus ingest`).
    """

    type: Literal["document.arrived"] = "document.arrived"
    """Required on documents.v1: which event this is."""
    document_id: DocumentId
    """Your id for the document, unique within the tenant; the same id replaces the earlier version."""
    version: Annotated[int, Field(ge=0)] | None = None
    """Orders updates of one document (a revision number or a timestamp); the highest wins. Absent: the
    event time in microseconds."""
    title: ShortText = ""
    """Shown with citations and embedded with every chunk."""
    source: Annotated[str, StringConstraints(max_length=2048)] = ""
    """Where the document came from (a link for people; ragbus does not read it)."""
    content_type: ContentType = ContentType.TEXT
    """How to read the content: Markdown and HTML headings become section paths, PDFs are split by page."""
    text: str | None = None
    """The content inline: UTF-8 text up to 512 KiB, not PDF."""
    content_ref: ContentRef | None = None
    """The content in ragbus's own claim-check store (what `ragbus ingest` uses)."""
    content_url: ContentUrl | None = None
    """The content by reference: https://, s3:// or file:// (under a configured root), read by ragbus from
    places its operator allowed (RAGBUS_FETCH_ALLOWED_URLS, RAGBUS_FETCH_FILE_ROOTS)."""
    content_sha256: Sha256 | None = None
    """Optional sha256 (hex) of the bytes behind content_url: ragbus refuses other bytes."""
    metadata: Metadata = Field(default_factory=dict)
    """Up to 32 key/value pairs, kept with every chunk and usable as query filters. The key `parent` names
    the larger work this document is part of (a page's URL for its sections, a book for its chapters): where
    the operator turns parent evidence on (RAGBUS_RETRIEVAL_PARENT_WEIGHT, off by default), retrieval counts
    a good match in one part as evidence for the others. Documents are never grouped by their titles."""
    acl: Principals | None = None
    """Who may read the document: principal strings (`user:alice`, `group:eng`; up to 1,024 of up to 256
    printable characters). A query sees it only when one of its `principals` is listed. Absent: the event says
    nothing about access, and the document keeps the ACL it has (a new document is readable by every query of
    its tenant, unless the operator denies unlisted documents: RAGBUS_ACL_DENY_UNLISTED)."""
    acl_version: Annotated[int, Field(ge=0)] = 0
    """Orders this event's `acl` against `document.acl_changed` events: the highest acl_version wins, whatever
    the content version; at equal acl_version an acl_changed wins over a document's own acl, and a newer content
    version's acl over an older one's. So a content update published later with an older ACL cannot re-open a
    document whose access was revoked."""

    @model_validator(mode="after")
    def _one_content(self) -> Self:
        given = [n for n in ("text", "content_url", "content_ref") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("exactly one of text (inline), content_url (by reference) or content_ref "
                             f"(claim-check) must be set, got {' and '.join(given) or 'none'}")
        if self.content_sha256 is not None and self.content_url is None:
            raise ValueError("content_sha256 pins the bytes behind content_url: set it only with content_url")
        if self.text is not None:
            if self.content_type is ContentType.PDF:
                raise ValueError("application/pdf content cannot travel as inline text: send content_url")
            size = len(self.text.encode("utf-8", "surrogatepass"))
            if size > INLINE_TEXT_MAX_BYTES:
                raise ValueError(
                    f"inline text is {size} bytes, over the {INLINE_TEXT_MAX_BYTES}-byte limit: "
                    "publish the content where ragbus can read it and send content_url"
                )
        return self

    @property
    def effective_version(self) -> int:
        return self.version if self.version is not None else self.micros()


class DocumentDeleted(Envelope):
    """Remove a document and all its chunks up to `version`. Key: document key."""

    type: Literal["document.deleted"] = "document.deleted"
    """Required on documents.v1: which event this is."""
    document_id: DocumentId
    """The id the document was published with."""
    version: Annotated[int, Field(ge=0)] | None = None
    """Delete every version up to and including this one (an update with a higher version still comes
    through). Absent: the event time in microseconds."""

    @property
    def effective_version(self) -> int:
        return self.version if self.version is not None else self.micros()


class DocumentAclChanged(Envelope):
    """Who may read a document, changed without re-chunking or re-embedding it. Key: `tenant/document_id` (a
    record keyed with another document's key is dead-lettered). The highest `acl_version` wins, independently of
    the content version (see DocumentArrived.acl_version); a change for a document not indexed yet is kept and
    applies when it arrives. Reported on the status topic (`about: acl`)."""

    type: Literal["document.acl_changed"] = "document.acl_changed"
    """Required on documents.v1: which event this is."""
    document_id: DocumentId
    """The id the document was (or will be) published with."""
    acl: Principals | None
    """Who may read the document from now on (principal strings, as DocumentArrived.acl); null: no ACL, the
    document is readable by every query of its tenant (unless the operator denies unlisted documents)."""
    acl_version: Annotated[int, Field(ge=1)]
    """Orders ACL changes of one document: a change with a lower or equal acl_version than the one in force is
    ignored (reported, not applied)."""


class DocumentReindex(Envelope):
    """Operators' event, published by `ragbus reindex start|resume`, not by upstream systems: index the document's
    current version, read from ragbus's own content store, into one index generation (kernel/generations.py).
    Key: `tenant/document_id`, on the documents topic, so it stays ordered with the document's own events; a
    version that is superseded or deleted by the time it reaches the indexer is skipped."""

    type: Literal["document.reindex"] = "document.reindex"
    """Required on documents.v1: which event this is."""
    document_id: DocumentId
    version: Annotated[int, Field(ge=0)]
    """The version whose content is under `content_ref` (the document store's current row)."""
    generation: Generation
    """The generation to index it into (`g2`, ...)."""
    content_sha256: Sha256
    """The version's content, as kept in ragbus's content store (every document's content is kept there)."""
    content_type: ContentType = ContentType.TEXT
    title: ShortText = ""
    source: Annotated[str, StringConstraints(max_length=2048)] = ""
    metadata: Metadata = Field(default_factory=dict)


class Chunk(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    index: Annotated[int, Field(ge=0)]
    text: Annotated[str, StringConstraints(min_length=1, max_length=32_000)]
    section_path: Annotated[list[ShortText], Field(max_length=16)] = Field(default_factory=list)
    #: Number of the document section the chunk belongs to (chunks of one section share it).
    section: Annotated[int, Field(ge=0)] = 0


class SectionLead(BaseModel):
    """A section as one retrievable entry: its heading path and lead text (the start of the section, at
    most SECTION_TEXT_MAX_CHARS), indexed as the representation above its chunks. It travels in the part
    that holds the section's first chunk."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    section: Annotated[int, Field(ge=0)]
    text: Annotated[str, StringConstraints(min_length=1, max_length=SECTION_TEXT_MAX_CHARS)]
    section_path: Annotated[list[ShortText], Field(max_length=16)] = Field(default_factory=list)


class _DocumentPart(Envelope):
    """A slice of one document version's chunks (one document may span several messages)."""

    document_id: DocumentId
    version: Annotated[int, Field(ge=0)]
    content_hash: Sha256
    title: ShortText = ""
    source: Annotated[str, StringConstraints(max_length=2048)] = ""
    metadata: Metadata = Field(default_factory=dict)
    part: Annotated[int, Field(ge=0)]
    parts: Annotated[int, Field(ge=1)]
    total_chunks: Annotated[int, Field(ge=0)]
    #: `occurred_at` of the DocumentArrived these chunks were cut from, carried to the indexer for the
    #: freshness metric (publication -> searchable). Optional: producers before it did not send it.
    document_occurred_at: datetime | None = None
    #: The DocumentArrived's access fields, carried to the indexer, which orders them against ACL changes.
    acl: Principals | None = None
    acl_version: Annotated[int, Field(ge=0)] = 0
    #: The index generation these chunks are for (kernel/generations.py); producers before generations: g1.
    generation: Generation = FIRST_GENERATION
    #: Every generation this version was chunked for at once (empty: not said). A generation that started building
    #: while the version was on its way is not among them: the indexer then has it rebuilt for that one.
    generations: Annotated[list[Generation], Field(max_length=8)] = Field(default_factory=list)
    #: How the document's content reads, kept with its row for a rebuild of the index.
    content_type: ContentType = ContentType.TEXT

    @field_validator("document_occurred_at")
    @classmethod
    def _aware_document_time(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("document_occurred_at must carry a timezone (ISO 8601 with offset or Z)")
        return value

    @model_validator(mode="after")
    def _part_in_range(self) -> Self:
        if self.part >= self.parts:
            raise ValueError(f"part {self.part} is not below parts {self.parts}")
        return self


class ChunksProduced(_DocumentPart):
    type: Literal["chunks.produced"] = "chunks.produced"
    chunks: Annotated[list[Chunk], Field(max_length=CHUNKS_PER_PART)]
    #: The sections whose first chunk is in this part (older producers send none).
    sections: Annotated[list[SectionLead], Field(max_length=CHUNKS_PER_PART)] = Field(default_factory=list)


class EmbeddedChunk(Chunk):
    """A chunk with its vector, base64 of little-endian float32 (a third of the size of JSON floats)."""

    #: At most 8192 float32 values (the `dim` bound) in base64.
    vector_b64: Annotated[str, StringConstraints(max_length=43_692)]

    def vector(self) -> np.ndarray[Any, np.dtype[np.float32]]:
        return np.frombuffer(base64.b64decode(self.vector_b64), dtype="<f4")

    @staticmethod
    def encode_vector(vector: npt.ArrayLike) -> str:
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


class EmbeddedSection(SectionLead):
    """A section entry with its vector (base64 of little-endian float32, as EmbeddedChunk): the vector of the
    section's first chunk."""

    vector_b64: Annotated[str, StringConstraints(max_length=43_692)]

    def vector(self) -> np.ndarray[Any, np.dtype[np.float32]]:
        return np.frombuffer(base64.b64decode(self.vector_b64), dtype="<f4")


class ChunksEmbedded(_DocumentPart):
    type: Literal["chunks.embedded"] = "chunks.embedded"
    model: ShortText
    dim: Annotated[int, Field(ge=1, le=8192)]
    chunks: Annotated[list[EmbeddedChunk], Field(max_length=CHUNKS_PER_PART)]
    sections: Annotated[list[EmbeddedSection], Field(max_length=CHUNKS_PER_PART)] = Field(default_factory=list)


class Status(StrEnum):
    RECEIVED = "received"
    CHUNKED = "chunked"
    EMBEDDED = "embedded"
    INDEXED = "indexed"
    DELETED = "deleted"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (Status.INDEXED, Status.DELETED, Status.FAILED)

    @property
    def rank(self) -> int:
        """Status moves forward only: a stale event cannot move a document back."""
        return _STATUS_RANK[self]


#: At one version: failed < indexed, so a replay that succeeds after a fix can finish a failed version,
#: while a late failure report can never un-index one; deleted beats everything.
_STATUS_RANK = {
    Status.RECEIVED: 0,
    Status.CHUNKED: 1,
    Status.EMBEDDED: 2,
    Status.FAILED: 3,
    Status.INDEXED: 4,
    Status.DELETED: 5,
}


class DocumentStatus(Envelope):
    """A document's progress. Key: document key. Consumed by the status sink and `ingest --wait`."""

    type: Literal["document.status"] = "document.status"
    document_id: DocumentId
    version: Annotated[int, Field(ge=0)]
    """The document version this status is about (the effective version: yours, or the event time in µs)."""
    status: Status
    """received < chunked < embedded < indexed; failed (with `error`) or deleted end a version."""
    stage: ShortText
    """The stage that reported it."""
    chunks: Annotated[int, Field(ge=0)] = 0
    error: Annotated[str, StringConstraints(max_length=2048)] = ""
    """Why the version failed (the same reason its dead letter carries)."""
    about: Literal["content", "acl"] = "content"
    """What the status is about: a content version (`version`), or an ACL change (`version` is its acl_version;
    `indexed`: in force in the index, `failed`: refused, with `error`)."""


class QueryRequested(Envelope):
    """A question to answer. Key: query id, which is also the idempotency key."""

    type: Literal["query.requested"] = "query.requested"
    query_id: QueryId = Field(default_factory=lambda: uuid.uuid4().hex)
    """Your id for the query, any printable text up to 256 characters; the answer carries it back
    unchanged. A query id asked again gets the stored answer again (it is the idempotency key)."""
    text: Annotated[str, StringConstraints(min_length=1, max_length=QUESTION_MAX_CHARS)]
    """The question."""
    top_k: Annotated[int, Field(ge=1, le=TOP_K_MAX)] = 5
    """How many chunks to retrieve and cite at most."""
    retrieve_only: bool = False
    """Return the ranked chunks as citations, without generating an answer."""
    stream: bool = False
    """Also publish the answer as it is generated, as answer.delta events."""
    agentic: bool = False
    """Let the model run follow-up searches (same tenant and filters) before it answers."""
    filters: Metadata = Field(default_factory=dict)
    """Only chunks whose document metadata has these exact values."""
    deadline_ms: Annotated[int, Field(ge=100, le=600_000)] = 60_000
    """The answer is published within this time, degraded if the model is too slow."""
    principals: Principals = Field(default_factory=list)
    """Who is asking, as the asking system authenticated them (`user:alice`, `group:eng`; up to 1,024 of up to
    256 printable characters): only documents whose `acl` lists one of them, and documents without an ACL, are
    searched and cited. None: only documents without an ACL. ragbus trusts what the query says (docs/security.md)."""
    conversation_id: ConversationId | None = None
    """The conversation this question continues (any printable text up to 256 characters; absent: a standalone
    question). Its earlier turns, kept per tenant and asker, are used to rewrite it into a standalone search query
    and given to the model as context. A conversation id that is unknown, expired, deleted, another tenant's or
    started by an asker with other principals starts a new conversation (the answer's `turn` is 1). Key the turns
    of one conversation by its id, so that they share a partition and are answered in order (docs/subscribing.md)."""

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("question must not be blank")
        return value


class ConversationDeleted(Envelope):
    """Erase a conversation: its turns, the answers logged for them and the answers cached for their context, in
    its tenant, whoever asked them. Published on queries.v1; key it by the conversation id, like its turns, so it
    is handled after the turns published before it. Deleting an unknown conversation is not an error."""

    type: Literal["conversation.deleted"] = "conversation.deleted"
    """Required: which event this is (an event on queries.v1 without `type` is a query.requested)."""
    conversation_id: ConversationId
    """The id the conversation's queries carried."""


class Citation(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", use_attribute_docstrings=True)

    rank: Annotated[int, Field(ge=1)]
    """The `[n]` the answer text uses for this citation."""
    document_id: DocumentId
    chunk_id: str
    """Stable id of the chunk (a uuid5 of tenant, document, version and chunk index)."""
    score: float
    text: str
    """The cited chunk's text."""
    title: ShortText = ""
    section_path: list[ShortText] = Field(default_factory=list)


class Timings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    retrieve_ms: float = 0.0
    generate_ms: float = 0.0
    total_ms: float = 0.0


class Usage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cost_usd: float = 0.0


class AnswerDelta(Envelope):
    """A streamed piece of an answer. Key: query id; `seq` orders deltas of one query."""

    type: Literal["answer.delta"] = "answer.delta"
    query_id: QueryId
    """The query's id, as it was asked."""
    seq: Annotated[int, Field(ge=0)]
    """Orders the deltas of one query (0, 1, 2, ...); concatenate `text` in this order."""
    text: str


class AnswerGenerated(Envelope):
    """The one final answer of a query. Key: query id.

    `degraded` is true whenever the answer did not come from the configured language model (for
    example the offline extractive answerer); `degraded_reason` says why.
    """

    type: Literal["answer.generated"] = "answer.generated"
    query_id: QueryId
    """The query's id, as it was asked: correlate answers to questions by it."""
    question: str
    answer: str
    """The answer text, with `[n]` markers that refer to `citations[].rank`."""
    degraded: bool
    """True when the answer did not come from the configured language model."""
    degraded_reason: str = ""
    retrieve_only: bool = False
    citations: list[Citation]
    model: ShortText = ""
    prompt_version: ShortText = ""
    timings: Timings = Field(default_factory=Timings)
    usage: Usage = Field(default_factory=Usage)
    dropped_citations: int = 0
    #: True when this answer was served from the answer cache (same prompt, model, question and chunks).
    cached: bool = False
    search_query: str = ""
    """What was searched: the question itself, or, for a follow-up in a conversation, the standalone query it was
    rewritten into (empty on answers of versions before conversations)."""
    conversation_id: ConversationId | None = None
    """The query's conversation id, as it was asked."""
    turn: Annotated[int, Field(ge=0)] = 0
    """This question's turn in its conversation (1: the first, or a conversation started afresh); 0 without one."""
    dropped_turns: Annotated[int, Field(ge=0)] = 0
    """Earlier turns of the conversation left out of the model's context because they did not fit its token budget
    (the oldest first; RAGBUS_CONVERSATION_CONTEXT_TOKENS)."""
    error: str = ""
    """Set when the query could not be answered at all (it was dead-lettered): why, with an empty answer."""


class DeadLetter(BaseModel):
    """What a dead-letter record says. On the wire the value is the original bytes, untouched, and
    these fields travel in headers (`ragbus-dlq-*`), so a replay re-publishes exactly what arrived."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    stage: str
    topic: str
    partition: int
    offset: int
    error_type: str
    reason: str
    occurred_at: datetime
    attempts: int = 1
    key: str | None = None
    value_preview: str = ""
