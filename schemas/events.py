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

import numpy as np
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

#: Inline text up to this many UTF-8 bytes travels in the event; larger content is stored first and
#: referenced (claim-check). Kafka's default message limit is 1 MB; this leaves room for the envelope.
INLINE_TEXT_MAX_BYTES = 512 * 1024
#: Hard limit on one document's content, inline or claim-checked.
DOCUMENT_MAX_BYTES = 16 * 1024 * 1024
#: Chunks per ChunksProduced/ChunksEmbedded message: keeps each message far below 1 MB with vectors.
CHUNKS_PER_PART = 64
QUESTION_MAX_CHARS = 4_000
TOP_K_MAX = 50
METADATA_MAX_KEYS = 32

NAMESPACE = uuid.UUID("6f1b2a3c-58d4-4f0e-9a57-2c1b7e0d9a11")


def _no_control_chars(value: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters")
    return value


Tenant = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
DocumentId = Annotated[
    str, StringConstraints(min_length=1, max_length=512, strip_whitespace=True), AfterValidator(_no_control_chars)
]
QueryId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")]
ShortText = Annotated[str, StringConstraints(max_length=1024)]
MetaKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
MetaValue = Annotated[str, StringConstraints(max_length=512)] | int | float | bool
Metadata = Annotated[dict[MetaKey, MetaValue], Field(max_length=METADATA_MAX_KEYS)]


def utcnow() -> datetime:
    return datetime.now(UTC)


def chunk_uuid(tenant: str, document_id: str, version: int, index: int) -> str:
    """Deterministic chunk id: a redelivery writes the same id, so writes are idempotent."""
    return str(uuid.uuid5(NAMESPACE, f"{tenant}\x1f{document_id}\x1f{version}\x1f{index}"))


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ContentType(StrEnum):
    TEXT = "text/plain"
    MARKDOWN = "text/markdown"
    HTML = "text/html"
    PDF = "application/pdf"


class Envelope(BaseModel):
    """Fields every event carries."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    schema_version: Literal[1] = 1  # SCHEMA_VERSION
    occurred_at: datetime = Field(default_factory=utcnow)
    correlation_id: Annotated[str, StringConstraints(max_length=128)] = ""
    tenant: Tenant = "default"

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("occurred_at must carry a timezone (ISO 8601 with offset or Z)")
        return value

    def micros(self) -> int:
        return int(self.occurred_at.timestamp() * 1_000_000)


class ContentRef(BaseModel):
    """Claim-check: content stored in the document store, referenced by its sha256."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    size: Annotated[int, Field(ge=0, le=DOCUMENT_MAX_BYTES)]


class DocumentArrived(Envelope):
    """A document (new or updated) to index. Key: document key (tenant + id).

    `version` orders updates of one document: upstream may set it (a revision number or timestamp);
    when absent, the event time in microseconds is used. A higher version always wins.
    """

    type: Literal["document.arrived"] = "document.arrived"
    document_id: DocumentId
    version: Annotated[int, Field(ge=0)] | None = None
    title: ShortText = ""
    source: Annotated[str, StringConstraints(max_length=2048)] = ""
    content_type: ContentType = ContentType.TEXT
    text: str | None = None
    content_ref: ContentRef | None = None
    metadata: Metadata = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_content(self) -> Self:
        if (self.text is None) == (self.content_ref is None):
            raise ValueError("exactly one of text (inline) or content_ref (claim-check) must be set")
        if self.text is not None:
            if self.content_type is ContentType.PDF:
                raise ValueError("application/pdf content must be sent by content_ref, not inline text")
            size = len(self.text.encode("utf-8", "surrogatepass"))
            if size > INLINE_TEXT_MAX_BYTES:
                raise ValueError(
                    f"inline text is {size} bytes, over the {INLINE_TEXT_MAX_BYTES}-byte limit: "
                    "store the content first and send content_ref"
                )
        return self

    @property
    def effective_version(self) -> int:
        return self.version if self.version is not None else self.micros()


class DocumentDeleted(Envelope):
    """Remove a document and all its chunks up to `version`. Key: document key."""

    type: Literal["document.deleted"] = "document.deleted"
    document_id: DocumentId
    version: Annotated[int, Field(ge=0)] | None = None

    @property
    def effective_version(self) -> int:
        return self.version if self.version is not None else self.micros()


class Chunk(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    index: Annotated[int, Field(ge=0)]
    text: Annotated[str, StringConstraints(min_length=1, max_length=32_000)]
    section_path: Annotated[list[ShortText], Field(max_length=16)] = Field(default_factory=list)


class _DocumentPart(Envelope):
    """A slice of one document version's chunks (one document may span several messages)."""

    document_id: DocumentId
    version: Annotated[int, Field(ge=0)]
    content_hash: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    title: ShortText = ""
    source: Annotated[str, StringConstraints(max_length=2048)] = ""
    metadata: Metadata = Field(default_factory=dict)
    part: Annotated[int, Field(ge=0)]
    parts: Annotated[int, Field(ge=1)]
    total_chunks: Annotated[int, Field(ge=0)]
    #: `occurred_at` of the DocumentArrived these chunks were cut from, carried to the indexer for the
    #: freshness metric (publication -> searchable). Optional: producers before it did not send it.
    document_occurred_at: datetime | None = None

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


class EmbeddedChunk(Chunk):
    """A chunk with its vector, base64 of little-endian float32 (a third of the size of JSON floats)."""

    #: At most 8192 float32 values (the `dim` bound) in base64.
    vector_b64: Annotated[str, StringConstraints(max_length=43_692)]

    def vector(self) -> np.ndarray[Any, np.dtype[np.float32]]:
        return np.frombuffer(base64.b64decode(self.vector_b64), dtype="<f4")

    @staticmethod
    def encode_vector(vector: Any) -> str:
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


class ChunksEmbedded(_DocumentPart):
    type: Literal["chunks.embedded"] = "chunks.embedded"
    model: ShortText
    dim: Annotated[int, Field(ge=1, le=8192)]
    chunks: Annotated[list[EmbeddedChunk], Field(max_length=CHUNKS_PER_PART)]


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
    status: Status
    stage: ShortText
    chunks: Annotated[int, Field(ge=0)] = 0
    error: Annotated[str, StringConstraints(max_length=2048)] = ""


class QueryRequested(Envelope):
    """A question to answer. Key: query id, which is also the idempotency key."""

    type: Literal["query.requested"] = "query.requested"
    query_id: QueryId = Field(default_factory=lambda: uuid.uuid4().hex)
    text: Annotated[str, StringConstraints(min_length=1, max_length=QUESTION_MAX_CHARS)]
    top_k: Annotated[int, Field(ge=1, le=TOP_K_MAX)] = 5
    retrieve_only: bool = False
    stream: bool = False
    #: Let the model run follow-up searches (same tenant and filters) before it answers.
    agentic: bool = False
    filters: Metadata = Field(default_factory=dict)
    deadline_ms: Annotated[int, Field(ge=100, le=600_000)] = 60_000

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("question must not be blank")
        return value


class Citation(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    rank: Annotated[int, Field(ge=1)]
    document_id: DocumentId
    chunk_id: str
    score: float
    text: str
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
    seq: Annotated[int, Field(ge=0)]
    text: str


class AnswerGenerated(Envelope):
    """The one final answer of a query. Key: query id.

    `degraded` is true whenever the answer did not come from the configured language model (for
    example the offline extractive answerer); `degraded_reason` says why.
    """

    type: Literal["answer.generated"] = "answer.generated"
    query_id: QueryId
    question: str
    answer: str
    degraded: bool
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
    error: str = ""


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
