"""Ports: what the stages need from the outside world, as Protocols.

Every port has one adapter per backend (embedded: LanceDB, SQLite, local model; production: Weaviate,
MongoDB, Anthropic; content by URL: https, S3, local files) and one contract suite in tests/contract
that every adapter must pass. Adapters apply the version rules of kernel/versions.py and raise
kernel.errors types, classified from their backend's exception types and status codes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

import numpy as np

from kernel.generations import FIRST, GenerationStore
from kernel.permissions import PUBLIC_ONLY, Acl
from schemas.events import Citation, ContentRef, Status, Usage

Vector = np.ndarray[Any, np.dtype[np.float32]]
#: A metadata value, as the wire contract allows it (schemas.events.MetaValue).
Scalar = str | int | float | bool
Metadata = Mapping[str, Scalar]
#: One L2-normalised float32 row per text.
Vectors = np.ndarray[Any, np.dtype[np.float32]]


class Level(StrEnum):
    """What an index entry stands for: a chunk, or a whole section of a document (its title, heading path
    and lead text: the representation above the chunk that retrieval ranks sections by)."""

    CHUNK = "chunk"
    SECTION = "section"


@dataclass(frozen=True)
class ChunkRecord:
    """An index entry. For a chunk, `index` is its position in the document; for a section entry
    (`level` SECTION), `index` is the section's number and `text` its lead. `section` is the number of
    the section the entry belongs to (chunks of one section share it)."""

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
    section: int = 0
    level: Level = Level.CHUNK
    #: Visibility tokens (kernel/permissions.py): a search reads the entry only with one of them.
    acl: tuple[str, ...] = PUBLIC_ONLY


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
    section: int = 0
    level: Level = Level.CHUNK

    @property
    def section_key(self) -> tuple[str, int, int]:
        """The section this hit belongs to (document, version, section number)."""
        return (self.document_id, self.version, self.section)


@dataclass(frozen=True)
class SearchRequest:
    """One retrieval in a tenant's index: the best `candidates` entries per level asked for, by each
    retriever asked for. Levels are searched together (one query per retriever, `candidates` times the
    number of levels deep), so a level may get more or fewer than `candidates` entries.

    `heading_weight` weighs a keyword match in the title and heading path against one in the text.
    `visible`: the visibility tokens the asker holds (kernel/permissions.py); only entries holding one of them
    are searched, inside the index query. The default reads documents without an ACL only; none reads nothing."""

    text: str
    vector: Vector
    candidates: int
    levels: tuple[Level, ...] = (Level.CHUNK,)
    filters: Metadata | None = None
    heading_weight: float = 1.0
    dense: bool = True
    keyword: bool = True
    visible: tuple[str, ...] = PUBLIC_ONLY

    def __post_init__(self) -> None:
        if not self.levels or len(set(self.levels)) != len(self.levels):
            raise ValueError(f"a search asks for one or more distinct levels, not {self.levels!r}")
        if self.candidates < 1:
            raise ValueError(f"a search asks for at least one candidate, not {self.candidates}")


@dataclass(frozen=True)
class Candidates:
    """Each retriever's ranked entries with its own raw scores (cosine similarity; BM25), best first."""

    dense: list[SearchHit] = field(default_factory=list)
    keyword: list[SearchHit] = field(default_factory=list)


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
    #: How the content reads (schemas.events.ContentType's value): what a rebuild of the index needs with the
    #: content kept under `content_hash`.
    content_type: str = "text/plain"


class VectorIndex(Protocol):
    """Chunks and section entries with vectors and text; vector (cosine) and keyword (BM25 with stemming
    and stop words, title and heading path weighted) search, always within one tenant. Fusing the two is
    retrieval's job (retrieval/), the same for every backend."""

    def upsert(self, chunks: Sequence[ChunkRecord]) -> list[WriteFailure]:
        """Write entries of either level; the same id again replaces the entry."""

    def delete_versions(self, tenant: str, document_id: str, *, below: int) -> None:
        """Delete the document's entries (both levels) whose version is < `below`."""

    def search(self, tenant: str, request: SearchRequest) -> Candidates:
        """The best `request.candidates * len(request.levels)` entries of those levels, per retriever asked for."""

    def section_chunks(self, tenant: str, sections: Sequence[tuple[str, int, int]], per_section: int,
                       visible: tuple[str, ...] = PUBLIC_ONLY) -> list[SearchHit]:
        """The first `per_section` chunks of each (document, version, section) readable with `visible`, in
        document order (score 0): what a section found only by its section entry is cited by."""

    def set_acl(self, tenant: str, document_id: str, acl: tuple[str, ...]) -> None:
        """Replace the visibility tokens of every entry of the document (all versions), in place: no entry is
        re-embedded or re-written otherwise."""

    def chunk_versions(self, tenant: str, document_id: str) -> list[tuple[str, int]]:
        """(chunk_id, version) of every stored chunk (not section entry) of a document: for audits and tests."""

    def count(self, tenant: str | None = None) -> int:
        """Stored chunks (section entries are not counted)."""

    def maintain(self, force: bool = False) -> None:
        """Upkeep (fold new rows into the indexes, compact, build an ANN index when due); cheap when
        nothing is due; `force`: fold everything now. Called from a thread of its own, concurrently with
        writes and searches, so it must never make them wait or fail."""

    def drop(self) -> None:
        """Delete this index (its table or collection) and everything in it: a generation no longer kept."""

    def close(self) -> None: ...


class DocumentStore(GenerationStore, Protocol):
    """Documents and their status, the index generations and their progress (kernel/generations.py), the ids
    and versions of their stored chunks (the text lives in the vector index), claim-checked content and the answer
    log (each query id's one final answer)."""

    def get_document(self, tenant: str, document_id: str) -> DocumentRecord | None: ...

    def apply_status(self, record: DocumentRecord) -> bool:
        """Apply a status under the version rules; True when it changed the stored row."""

    def upsert_chunks(self, chunks: Sequence[ChunkRecord], generation: str = FIRST) -> None:
        """Record the ids and versions of chunks stored in `generation`'s index (ids differ per generation)."""

    def delete_chunk_versions(self, tenant: str, document_id: str, *, below: int) -> None:
        """Forget the document's chunks whose version is < `below`, in every generation."""

    def chunk_versions(self, tenant: str, document_id: str, generation: str = FIRST) -> list[tuple[str, int]]: ...

    def indexed_documents(self, after: tuple[str, str] | None = None, limit: int = 1000) -> list[DocumentRecord]:
        """Documents whose row is `indexed`, in (tenant, document_id) order after `after`: what a rebuild reads."""

    def put_content(self, data: bytes) -> ContentRef: ...

    def get_content(self, ref: ContentRef) -> bytes:
        """Raises KeyError when no content has that hash."""

    def get_acl(self, tenant: str, document_id: str) -> Acl | None:
        """The ACL in force for the document (None: no ACL statement was ever applied)."""

    def apply_acl(self, tenant: str, document_id: str, acl: Acl) -> Acl:
        """Keep `acl` when its order is above the stored one's (kernel/permissions.py); return the ACL in force
        afterwards. Atomic: concurrent writers converge on the highest order."""

    def get_answer(self, tenant: str, query_id: str) -> str | None: ...

    def put_answer(self, tenant: str, query_id: str, answer_json: str) -> str:
        """Store the answer unless one is stored for the query id already; return the stored one."""

    def delete_answers(self, tenant: str, query_ids: Sequence[str]) -> None:
        """Erase these answers from the log (a conversation's, when it is deleted); absent ones are no error."""

    def status_counts(self, tenant: str | None = None) -> dict[str, int]: ...

    def count_chunks(self, tenant: str | None = None, generation: str | None = None) -> int:
        """Stored chunk rows of the tenant (None: all), of one generation (None: every generation's)."""

    def list_documents(self, tenant: str | None = None, limit: int = 10_000) -> list[DocumentRecord]: ...

    def close(self) -> None: ...


class AnswerCache(Protocol):
    """Generated answers by what produced them (prompt version, model, mode, normalised question, retrieved
    chunks: `consumers.answerer.cache_key`), per tenant: the same question over the same chunks costs one model
    call. Storage of its own, apart from the answer log, whose keys are the clients' query ids (any printable
    text): no query id can name, read or plant an entry."""

    def get(self, tenant: str, key: str) -> str | None:
        """The cached answer (AnswerGenerated as JSON), or None."""

    def put(self, tenant: str, key: str, answer_json: str) -> None:
        """Cache an answer; an entry already there for the key stays (it answered the same question)."""

    def delete(self, tenant: str, keys: Sequence[str]) -> None:
        """Erase these entries (those computed for a deleted conversation); absent ones are no error."""


@dataclass(frozen=True)
class Turn:
    """One answered turn of a conversation, as kept for the turns after it."""

    query_id: str
    question: str
    #: What was searched for it (the question, or its standalone rewrite).
    search_query: str
    answer: str
    chunk_ids: tuple[str, ...] = ()
    #: Where this turn's answer is also kept, erased with the conversation: its answer-log key and, when it
    #: was cached, its answer-cache key.
    log_key: str = ""
    cache_key: str = ""


class ConversationStore(Protocol):
    """Conversations' turns, per tenant, conversation id and owner: the fingerprint of the visibility tokens of
    the asker (kernel.permissions.fingerprint), so the same id named by another tenant or by an asker who may
    read other documents is another conversation, which reads nothing of this one. Bounded: a conversation keeps
    its newest `max_turns` turns, and a turn is dropped `ttl_s` after it was stored (both the adapter's settings,
    RAGBUS_CONVERSATION_*)."""

    def turns(self, tenant: str, conversation_id: str, owner: str) -> list[Turn]:
        """The newest `max_turns` unexpired turns, oldest first; none for an unknown, expired or deleted one."""

    def add_turn(self, tenant: str, conversation_id: str, owner: str, turn: Turn) -> list[Turn]:
        """Append a turn; one with a query id already stored in the conversation stays as it is (a redelivery).
        Deletes the tenant's expired turns and returns them: their answers are to be erased elsewhere too."""

    def stored_turns(self, tenant: str, conversation_id: str) -> list[Turn]:
        """Every stored turn of that id in the tenant, whoever owns it, expired or not: what erasing it must
        also erase elsewhere (the answer log, the answer cache)."""

    def delete(self, tenant: str, conversation_id: str) -> None:
        """Erase every turn of that id in the tenant, whoever owns it."""


class EmbeddingCache(Protocol):
    """Vectors by content key (model + text hash): the same text is never embedded twice."""

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]: ...

    def put_many(self, items: Mapping[str, bytes]) -> None: ...


class Embedder(Protocol):
    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> Vectors:
        """L2-normalised float32 vectors, one row per text."""


class Reranker(Protocol):
    """Reorders first-stage hits by a model that reads the question and each passage together.

    Returns the same hits, best first, each with the reranker's score; raises RetrievalModelError when it
    gives no usable ranking in time (retrieval then keeps the first-stage order) and ConfigurationError
    when it never will (a rejected key)."""

    name: str

    def rerank(self, question: str, hits: Sequence[SearchHit]) -> list[SearchHit]: ...


class QueryRewriter(Protocol):
    """More ways to search for a question: paraphrases, or a hypothetical answer to embed.

    Returns extra queries (the question itself is always searched too); raises RetrievalModelError when it
    gives nothing usable in time and ConfigurationError when it never will."""

    name: str

    def rewrite(self, question: str) -> list[str]: ...


@dataclass(frozen=True)
class GeneratedAnswer:
    text: str
    citations: list[Citation]
    model: str
    prompt_version: str
    degraded: bool
    degraded_reason: str = ""
    dropped_citations: int = 0
    #: The model's token counts and cost: the wire contract's own type, published as the answer's `usage`.
    usage: Usage = field(default_factory=Usage)


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
    `search(query, top_k)` runs a follow-up retrieval in the query's tenant (agentic mode only); `history`: the
    earlier turns of the question's conversation that fit the context budget, oldest first (prior messages; the
    answer cites only `hits` and what `search` returns).
    Raises AnswerModelError when the model gives no usable answer in time, ModelRequestError when it
    refuses this request, and ConfigurationError when it will refuse every request (a rejected key, an
    unknown model). The caller answers extractively, degraded, with the reason in every case: a model
    failure is never passed off as an answer, nor a reason to withhold one (consumers/model_guard.py).
    """

    name: str
    prompt_version: str

    def answer(self, question: str, hits: Sequence[SearchHit], *, on_delta: OnDelta | None = None,
               deadline_s: float | None = None, search: Search | None = None,
               history: Sequence[Turn] = ()) -> GeneratedAnswer: ...


@runtime_checkable
class Checked(Protocol):
    """An adapter that can verify its configuration at start-up (a key, a model name) without real work;
    raises ConfigurationError naming the setting to fix."""

    def check(self) -> None: ...
