"""Ports: what the stages need from the outside world, as Protocols.

Every port has one adapter per backend (embedded: LanceDB, SQLite, local model; production: Weaviate,
MongoDB, Anthropic; content by URL: https, S3, local files) and one contract suite in tests/contract
that every adapter must pass. Adapters apply the version rules of kernel/versions.py and raise
kernel.errors types, classified from their backend's exception types and status codes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from schemas.events import Citation, ContentRef, Status

Vector = np.ndarray[Any, np.dtype[np.float32]]
#: A metadata value, as the wire contract allows it (schemas.events.MetaValue).
Scalar = str | int | float | bool
Metadata = Mapping[str, Scalar]
#: One L2-normalised float32 row per text.
Vectors = np.ndarray[Any, np.dtype[np.float32]]


@dataclass(frozen=True)
class ChunkRecord:
    chunk_id: str
    tenant: str
    document_id: str
    version: int
    index: int
    text: str
    vector: Vector
    title: str = ""
    section_path: tuple[str, ...] = ()
    source: str = ""
    metadata: Metadata = field(default_factory=dict)


@dataclass(frozen=True)
class SearchHit:
    chunk_id: str
    document_id: str
    version: int
    index: int
    text: str
    score: float
    title: str = ""
    section_path: tuple[str, ...] = ()
    metadata: Metadata = field(default_factory=dict)


@dataclass(frozen=True)
class WriteFailure:
    """One object a backend refused, with the backend's own message."""

    chunk_id: str
    message: str


@dataclass(frozen=True)
class DocumentRecord:
    tenant: str
    document_id: str
    version: int
    status: Status
    chunks: int = 0
    error: str = ""
    content_hash: str = ""
    title: str = ""
    source: str = ""
    #: The upstream event's user metadata (kept with the version that is indexed).
    metadata: Metadata = field(default_factory=dict)


class VectorIndex(Protocol):
    """Chunks with vectors and text; hybrid (BM25 + vector) search, always within one tenant."""

    def upsert(self, chunks: Sequence[ChunkRecord]) -> list[WriteFailure]: ...

    def delete_versions(self, tenant: str, document_id: str, *, below: int) -> None:
        """Delete the document's chunks whose version is < `below`."""

    def hybrid_search(self, tenant: str, text: str, vector: Vector, *, limit: int, alpha: float,
                      candidates: int, filters: Metadata | None = None) -> list[SearchHit]:
        """Relative-score fusion of the `candidates` best of each retriever, best `limit` first."""

    def chunk_versions(self, tenant: str, document_id: str) -> list[tuple[str, int]]:
        """(chunk_id, version) of every stored chunk of a document: for audits and tests."""

    def count(self, tenant: str | None = None) -> int: ...

    def maintain(self) -> None:
        """Upkeep (fold new rows into the indexes, compact, build an ANN index when due); cheap when
        nothing is due. Called from a thread of its own, concurrently with writes and searches, so it must
        never make them wait or fail."""

    def close(self) -> None: ...


class DocumentStore(Protocol):
    """Documents and their status, the ids and versions of their stored chunks (the text lives in the
    vector index), claim-checked content and the query/answer log."""

    def get_document(self, tenant: str, document_id: str) -> DocumentRecord | None: ...

    def apply_status(self, record: DocumentRecord) -> bool:
        """Apply a status under the version rules; True when it changed the stored row."""

    def upsert_chunks(self, chunks: Sequence[ChunkRecord]) -> None: ...

    def delete_chunk_versions(self, tenant: str, document_id: str, *, below: int) -> None: ...

    def chunk_versions(self, tenant: str, document_id: str) -> list[tuple[str, int]]: ...

    def put_content(self, data: bytes) -> ContentRef: ...

    def get_content(self, ref: ContentRef) -> bytes:
        """Raises KeyError when no content has that hash."""

    def get_answer(self, tenant: str, query_id: str) -> str | None: ...

    def put_answer(self, tenant: str, query_id: str, answer_json: str) -> str:
        """Store the answer unless one is stored for the query id already; return the stored one."""

    def status_counts(self, tenant: str | None = None) -> dict[str, int]: ...

    def count_chunks(self, tenant: str | None = None) -> int: ...

    def list_documents(self, tenant: str | None = None, limit: int = 10_000) -> list[DocumentRecord]: ...

    def close(self) -> None: ...


class EmbeddingCache(Protocol):
    """Vectors by content key (model + text hash): the same text is never embedded twice."""

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]: ...

    def put_many(self, items: Mapping[str, bytes]) -> None: ...


class Embedder(Protocol):
    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> Vectors:
        """L2-normalised float32 vectors, one row per text."""


@dataclass(frozen=True)
class GeneratedAnswer:
    text: str
    citations: list[Citation]
    model: str
    prompt_version: str
    degraded: bool
    degraded_reason: str = ""
    dropped_citations: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True)
class FetchedContent:
    """The bytes behind a content_url, with what their source declared about them."""

    data: bytes
    #: The media type the source declared, lower case without parameters ("" when it declared none).
    media_type: str = ""
    #: The charset the source declared for text ("" when none).
    charset: str = ""


class ContentFetcher(Protocol):
    """Reads a document's content by reference (`DocumentArrived.content_url`).

    Reads only from places the operator allowed, at most the configured number of bytes, within the
    configured time. Raises `kernel.errors.FetchError` (this event's failure: dead-lettered with the
    message, which names the URL without its query string and says what to fix) when the URL is not
    allowed, is not there, is too large, too slow, or its source refuses it.
    """

    def fetch(self, url: str) -> FetchedContent: ...


OnDelta = Callable[[str], None]
Search = Callable[[str, int], list[SearchHit]]


class AnswerModel(Protocol):
    """Turns a question and retrieved chunks into a cited answer.

    `on_delta` receives streamed text (None: no streaming); `deadline_s` is the time left to answer;
    `search(query, top_k)` runs a follow-up retrieval in the query's tenant (agentic mode only).
    Raises AnswerModelError when the model gives no usable answer in time (the caller then answers
    extractively, degraded, with that reason) and ConfigurationError when it never will (a rejected
    key, an unknown model): a model failure is never passed off as an answer.
    """

    name: str
    prompt_version: str

    def answer(self, question: str, hits: Sequence[SearchHit], *, on_delta: OnDelta | None = None,
               deadline_s: float | None = None, search: Search | None = None) -> GeneratedAnswer: ...
