"""The topic registry: every topic declared once, with its event type, key and config.

Nobody writes a topic name anywhere else; code refers to `TOPICS.documents` and resolves the physical
name with a prefix from settings (so several deployments or test runs can share one cluster). Which stage
reads and writes which topic, and the dead-letter topic of each, are the stage registry's (schemas/stages.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, Discriminator, Field, Tag, TypeAdapter

from .events import (
    AnswerDelta,
    AnswerGenerated,
    ChunksEmbedded,
    ChunksProduced,
    ConversationDeleted,
    DocumentAclChanged,
    DocumentArrived,
    DocumentDeleted,
    DocumentReindex,
    DocumentStatus,
    QueryRequested,
)

DocumentEvent = Annotated[DocumentArrived | DocumentDeleted | DocumentAclChanged | DocumentReindex,
                          Field(discriminator="type")]
ChunkEvent = Annotated[ChunksProduced | DocumentDeleted | DocumentAclChanged, Field(discriminator="type")]
EmbeddedEvent = Annotated[ChunksEmbedded | DocumentDeleted | DocumentAclChanged, Field(discriminator="type")]


def _query_type(value: Any) -> str:
    """queries.v1 carried only query.requested before conversations, and its publishers need not send `type`:
    an event without one is still a query."""
    found = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return str(found) if found is not None else "query.requested"


QueryEvent = Annotated[Annotated[QueryRequested, Tag("query.requested")]
                       | Annotated[ConversationDeleted, Tag("conversation.deleted")], Discriminator(_query_type)]

_WEEK_MS = str(7 * 24 * 3600 * 1000)
_MESSAGE_MAX = str(2 * 1024 * 1024)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    #: The value's type, possibly a discriminated union; None for raw bytes (dead-letter topics).
    value_type: Any
    #: What the key is; events of one key keep their order.
    key: str
    #: None: the deployment's setting (RAGBUS_KAFKA_PARTITIONS, per topic RAGBUS_KAFKA_TOPIC_PARTITIONS),
    #: resolved by `engine.clients.partitions`.
    partitions: int | None = None
    config: dict[str, str] = field(default_factory=dict)
    description: str = ""

    def adapter(self) -> TypeAdapter[Any]:
        return _adapter(self.value_type)

    def models(self) -> list[type[BaseModel]]:
        """The event models this topic carries, in declaration order (none for a dead-letter topic)."""
        tp = self.value_type
        if tp is None:
            return []
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        if get_origin(tp) in (Union, UnionType):
            return [get_args(m)[0] if get_origin(m) is Annotated else m for m in get_args(tp)]
        return [tp]

    def event_types(self) -> list[str]:
        """The `type` values this topic accepts, e.g. document.arrived, document.deleted."""
        return [str(m.model_fields["type"].default) for m in self.models()]

    def physical(self, prefix: str) -> str:
        return f"{prefix}{self.name}"


_ADAPTERS: dict[int, TypeAdapter[Any]] = {}


def _adapter(tp: Any) -> TypeAdapter[Any]:
    if id(tp) not in _ADAPTERS:
        _ADAPTERS[id(tp)] = TypeAdapter(tp)
    return _ADAPTERS[id(tp)]


_RETAIN = {"cleanup.policy": "delete", "retention.ms": _WEEK_MS, "max.message.bytes": _MESSAGE_MAX}


@dataclass(frozen=True)
class Topics:
    documents: TopicSpec = TopicSpec(
        "documents.v1", DocumentEvent, "tenant/document_id", None, _RETAIN,
        "document arrived or deleted, from upstream systems and `ragbus ingest`",
    )
    chunks: TopicSpec = TopicSpec(
        "chunks.v1", ChunkEvent, "tenant/document_id", None, _RETAIN, "chunked documents (and deletes, in order)"
    )
    embedded: TopicSpec = TopicSpec(
        "embedded.v1", EmbeddedEvent, "tenant/document_id", None, _RETAIN, "chunks with vectors (and deletes)"
    )
    status: TopicSpec = TopicSpec(
        "status.v1", DocumentStatus, "tenant/document_id", None, _RETAIN, "document status changes"
    )
    queries: TopicSpec = TopicSpec(
        "queries.v1", QueryEvent, "query_id, or the conversation_id for a conversation's turns and its deletion",
        None, _RETAIN, "questions, and conversation deletions",
    )
    answers: TopicSpec = TopicSpec("answers.v1", AnswerGenerated, "query_id", None, _RETAIN, "final answers")
    answer_deltas: TopicSpec = TopicSpec(
        "answer-deltas.v1", AnswerDelta, "query_id", None,
        {"cleanup.policy": "delete", "retention.ms": str(24 * 3600 * 1000), "max.message.bytes": _MESSAGE_MAX},
        "streamed answer pieces, ordered per query",
    )

    def events(self) -> list[TopicSpec]:
        """The topics events travel on, in declaration order (each stage's dead-letter topic aside: every topic
        is `schemas.stages.PIPELINE.topics()`)."""
        return [getattr(self, f.name) for f in fields(self)]


def dead_letter_topic(stage: str) -> TopicSpec:
    """The dead-letter topic of a stage (each declared stage has one: `StageSpec.dead_letters`)."""
    return TopicSpec(
        f"dlq.{stage}.v1", None, "original key", 1,
        {"cleanup.policy": "delete", "retention.ms": str(30 * 24 * 3600 * 1000), "max.message.bytes": _MESSAGE_MAX},
        f"dead letters of the {stage} stage: original bytes, reason in headers",
    )


TOPICS = Topics()


def document_key(tenant: str, document_id: str) -> bytes:
    return f"{tenant}/{document_id}".encode()
