"""Client side of the bus, used by the CLI, the demo, tests and benchmarks: publish documents and
queries, and follow the status and answers topics for the replies."""

from __future__ import annotations

import difflib
import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from engine.clients import EventProducer, topic_name
from engine.serde import summarize
from engine.tail import Tail
from infra.ops import tracing
from infra.settings import Settings
from kernel.errors import RagbusError
from kernel.ports import DocumentStore
from schemas.events import (
    INLINE_TEXT_MAX_BYTES,
    AnswerDelta,
    AnswerGenerated,
    ContentType,
    DocumentArrived,
    DocumentDeleted,
    DocumentStatus,
    QueryRequested,
    Status,
)
from schemas.topics import TOPICS, document_key

SUFFIXES = {".txt": ContentType.TEXT, ".text": ContentType.TEXT, ".rst": ContentType.TEXT,
            ".md": ContentType.MARKDOWN, ".markdown": ContentType.MARKDOWN, ".html": ContentType.HTML,
            ".htm": ContentType.HTML, ".pdf": ContentType.PDF}
ACCEPTED = frozenset(SUFFIXES) | {".jsonl"}


class InputError(RagbusError):
    """A user's input (file, path, JSONL line) that cannot be ingested; the message says why."""


def _event(settings: Settings, store: DocumentStore | None, *, tenant: str, correlation: str, doc_id: str,
           title: str, source: str, content_type: ContentType, data: bytes | str,
           metadata: dict[str, Any] | None = None, acl: list[str] | None = None) -> DocumentArrived:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    common: dict[str, Any] = {"tenant": tenant, "correlation_id": correlation, "document_id": doc_id,
                              "title": title, "source": source, "content_type": content_type,
                              "metadata": metadata or {}, "acl": acl}
    if content_type is ContentType.PDF or len(raw) > INLINE_TEXT_MAX_BYTES:
        if store is None:
            raise InputError(f"{source}: content over {INLINE_TEXT_MAX_BYTES} bytes needs the document store")
        return DocumentArrived(**common, content_ref=store.put_content(raw))
    try:
        text = raw.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise InputError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    return DocumentArrived(**common, text=text)


def documents_from(paths: Iterable[Path], settings: Settings, store: DocumentStore | None, tenant: str,
                   correlation: str, id_prefix: str | None = None) -> Iterator[DocumentArrived]:
    """One event per file, or per line of a .jsonl file (`id`, `title`, `text`, optional `metadata`).

    Ids do not depend on the working directory: a file named directly gets its file name
    (`README.md`), a file found in a directory its path from that directory, starting with the
    directory's name (`docs/guide/intro.md` for `ragbus ingest docs` or `ragbus ingest /repo/docs`).
    `id_prefix` replaces the directory's name (or goes in front of a file's name, or of a JSONL id),
    verbatim: `--id-prefix handbook/` gives `handbook/guide/intro.md`. Two inputs that would get the
    same id are refused.
    """
    seen: dict[str, str] = {}
    for event in _documents(paths, settings, store, tenant, correlation, id_prefix):
        if event.document_id in seen:
            raise InputError(f"{seen[event.document_id]} and {event.source} would both get the id "
                             f"{event.document_id!r}: ingest them separately, with different --id-prefix values")
        seen[event.document_id] = event.source
        yield event


def _documents(paths: Iterable[Path], settings: Settings, store: DocumentStore | None, tenant: str,
               correlation: str, id_prefix: str | None) -> Iterator[DocumentArrived]:
    for path in paths:
        if not path.exists():
            raise InputError(f"{path}: no such file or directory")
        root = path.resolve()
        if path.is_dir():
            files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in ACCEPTED)
            base, prefix = root, (id_prefix if id_prefix is not None else (f"{root.name}/" if root.name else ""))
        else:
            files, base, prefix = [root], root.parent, id_prefix or ""
        for file in files:
            suffix = file.suffix.lower()
            if suffix == ".jsonl":
                yield from _jsonl(file, settings, store, tenant, correlation, id_prefix or "")
                continue
            if suffix not in SUFFIXES:
                raise InputError(f"{file}: unsupported file type {suffix or '(none)'}; "
                                 f"use one of {', '.join(sorted(SUFFIXES))} or .jsonl")
            yield _event(settings, store, tenant=tenant, correlation=correlation,
                         doc_id=prefix + file.relative_to(base).as_posix(),
                         title=file.stem.replace("_", " ").replace("-", " "), source=file.as_posix(),
                         content_type=SUFFIXES[suffix], data=file.read_bytes())


def _jsonl(file: Path, settings: Settings, store: DocumentStore | None, tenant: str,
           correlation: str, id_prefix: str) -> Iterator[DocumentArrived]:
    with file.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise InputError(f"{file}:{n}: expected a JSON object with 'id' and 'text' ({exc})") from exc
            yield row_event(settings, store, row, tenant=tenant, correlation=correlation,
                            source=f"{file.as_posix()}:{n}", id_prefix=id_prefix)


def row_event(settings: Settings, store: DocumentStore | None, row: object, *, tenant: str, correlation: str,
              source: str, id_prefix: str = "") -> DocumentArrived:
    """The event for one JSONL row (`id`, `text`, optional `title`, `content_type`, `metadata`, `acl`): what
    `ragbus ingest` publishes for it, and so what `ragbus eval` and the benchmarks publish too."""
    if not isinstance(row, dict) or "id" not in row or not isinstance(row.get("text"), str):
        raise InputError(f"{source}: expected a JSON object with 'id' and 'text' (a string)")
    try:
        content_type = ContentType(row.get("content_type", ContentType.TEXT.value))
    except ValueError:
        raise InputError(f"{source}: content_type {row.get('content_type')!r} is not one of "
                         f"{', '.join(c.value for c in ContentType)}") from None
    acl = row.get("acl")
    if acl is not None and not (isinstance(acl, list) and all(isinstance(p, str) for p in acl)):
        raise InputError(f"{source}: acl must be a list of principal strings, such as [\"group:eng\"]")
    try:
        return _event(settings, store, tenant=tenant, correlation=correlation, doc_id=id_prefix + str(row["id"]),
                      title=str(row.get("title") or ""), source=source, content_type=content_type,
                      data=row["text"], metadata=row.get("metadata") or {}, acl=acl)
    except ValidationError as exc:
        raise InputError(f"{source}: {summarize(exc, [DocumentArrived])}") from exc


def check_known(store: DocumentStore, deletes: list[DocumentDeleted]) -> list[DocumentDeleted]:
    """The deletes worth publishing: an id the store does not know is an error that says so (and suggests
    the ids it resembles); one already deleted is left out."""
    unknown, wanted = [], []
    for ev in deletes:
        doc = store.get_document(ev.tenant, ev.document_id)
        if doc is None:
            unknown.append(ev)
        elif doc.status is not Status.DELETED or (ev.version is not None and ev.version > doc.version):
            wanted.append(ev)
    if unknown:
        ev = unknown[0]
        known = [d.document_id for d in store.list_documents(ev.tenant)]
        close = difflib.get_close_matches(ev.document_id, known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise InputError(f"no document {ev.document_id!r} in tenant {ev.tenant!r}, nothing deleted{hint} (ids are "
                         "relative to the ingested folder; a document still being indexed is not known yet: "
                         "--force publishes the delete anyway)")
    return wanted


def publish(settings: Settings, producer: EventProducer, events: Iterable[DocumentArrived]) -> list[DocumentArrived]:
    """Each document starts its own trace: its `traceparent` header follows it through every stage."""
    sent = []
    topic = topic_name(settings, TOPICS.documents)
    for ev in events:
        with tracing.publishing(topic, ev) as trace_headers:
            producer.send(TOPICS.documents, document_key(ev.tenant, ev.document_id), ev, trace_headers)
        sent.append(ev)
    producer.flush()
    return sent


def wait_final(tail: Tail, events: list[DocumentArrived], timeout_s: float | None = None,
               progress: Callable[[DocumentStatus], None] | None = None,
               idle_timeout_s: float | None = None) -> dict[str, DocumentStatus]:
    """Follow status.v1 until every published document version is indexed or failed.

    Gives up after `timeout_s` in all (None: no limit), or after `idle_timeout_s` without progress (None: no
    limit): no status event at all, for any document, so a long ingest that keeps moving is followed to its
    end however long it takes, and a stalled one is reported once it has stopped moving.
    """
    wanted = {(e.tenant, e.document_id): e.effective_version for e in events}
    final: dict[str, DocumentStatus] = {}
    now = time.monotonic()
    deadline = now + timeout_s if timeout_s is not None else float("inf")
    moved = now
    while len(final) < len(wanted) and (now := time.monotonic()) < deadline:
        if idle_timeout_s is not None and now - moved > idle_timeout_s:
            break
        for st in tail.poll(0.5):
            moved = time.monotonic()  # any status means the pipeline is moving
            key = (st.tenant, st.document_id)
            if (key in wanted and st.about == "content" and st.version >= wanted[key] and st.status.final
                    and st.document_id not in final):
                final[st.document_id] = st
                if progress is not None:
                    progress(st)
    return final


def new_correlation() -> str:
    return f"ingest-{uuid.uuid4().hex[:12]}"


class QueryClient:
    """A long-lived query client: one producer and one reader of the answers and deltas topics, kept
    open across queries, so a query costs one publish and the wait for its answer (no connection set-up,
    no group join). Use it as a context manager; `ask` may be called any number of times."""

    def __init__(self, settings: Settings) -> None:
        self._producer = EventProducer(settings)
        self._replies = Tail(settings, TOPICS.answers, TOPICS.answer_deltas)
        self._topic = topic_name(settings, TOPICS.queries)

    def ask(self, queries: list[QueryRequested], timeout_s: float,
            on_delta: Callable[[AnswerDelta], None] | None = None) -> dict[str, AnswerGenerated]:
        """Publish queries and collect exactly one answer per query id (or none when the deadline passes)."""
        for q in queries:
            with tracing.publishing(self._topic, q) as trace_headers:  # a conversation's turns: one partition
                self._producer.send(TOPICS.queries, q.conversation_id or q.query_id, q, trace_headers)
        self._producer.flush()
        return collect_answers(self._replies, {q.query_id for q in queries}, timeout_s, on_delta)

    def close(self) -> None:
        self._replies.close()

    def __enter__(self) -> QueryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ask_many(settings: Settings, queries: list[QueryRequested], timeout_s: float,
             on_delta: Callable[[AnswerDelta], None] | None = None) -> dict[str, AnswerGenerated]:
    """Publish queries and collect exactly one answer per query id (or none when the deadline passes)."""
    with QueryClient(settings) as client:
        return client.ask(queries, timeout_s, on_delta)


class Polls(Protocol):
    def poll(self, timeout_s: float) -> Iterator[Any]: ...


#: How long the replies are read after the last answer arrived, for its deltas still unread.
DRAIN_S = 0.5


def collect_answers(replies: Polls, wanted: set[str], timeout_s: float,
                    on_delta: Callable[[AnswerDelta], None] | None = None) -> dict[str, AnswerGenerated]:
    """Read answers and deltas until every wanted query has its answer, passing deltas on as they come.

    A query's deltas are published before its answer, but on another topic: when the answer is read,
    deltas may still be unread. So with `on_delta`, the replies are drained after the last answer until a
    read brings no delta; no delta of an answered query is dropped (without it, nothing waits)."""
    got: dict[str, AnswerGenerated] = {}
    deadline = time.monotonic() + timeout_s

    def read(timeout: float) -> int:
        passed = 0
        for event in replies.poll(timeout):
            if event.query_id not in wanted:
                continue
            if isinstance(event, AnswerDelta):
                if on_delta is not None:
                    on_delta(event)
                    passed += 1
            elif event.query_id not in got:
                got[event.query_id] = event
        return passed

    while wanted - got.keys() and (left := deadline - time.monotonic()) > 0:
        read(min(left, 0.5))
    if on_delta is not None and got:
        while read(DRAIN_S) and time.monotonic() < deadline + 10 * DRAIN_S:
            pass
    return got
