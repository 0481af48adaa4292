"""Production document store, embedding cache and answer cache on MongoDB (pymongo).

Selected by RAGBUS_MONGODB_URI. Indexes are created at start-up. Every write uses an explicit
`w="majority", j=True` write concern, so an acknowledged write survives a primary failover, and
every write is idempotent: upserts keyed by deterministic ids, deletes bounded by version.

Status moves forward only without transactions: `apply_status` reads the row, decides with the shared
version rules (`accept_status`), and writes with a compare-and-set on the (version, status) it read;
a concurrent writer makes the compare fail and the decision is taken again on the new row.

The index generations are one document (`generations`, `_id: "generations"`) holding every generation's record
and a revision: each change of state replaces the list with a compare-and-set on the revision read, so a switch
or a rollback is one single-document write and a reader never sees two serving generations.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from bson import Binary
from pymongo import ASCENDING, MongoClient, ReplaceOne, WriteConcern
from pymongo.errors import (
    ConfigurationError as MongoConfigurationError,
)
from pymongo.errors import (
    ConnectionFailure,
    DocumentTooLarge,
    DuplicateKeyError,
    ExecutionTimeout,
    OperationFailure,
    PyMongoError,
    WriteConcernError,
    WTimeoutError,
)

from infra.settings import MongoSettings
from kernel.errors import ConfigurationError, PoisonMessageError, RetryableError
from kernel.generations import (
    FIRST,
    Build,
    Generation,
    GenerationConflict,
    Progress,
    State,
    refuse_drop,
    refuse_rollback,
    refuse_start,
    refuse_switch,
)
from kernel.permissions import Acl, AclOrder
from kernel.ports import ChunkRecord, DocumentRecord
from kernel.versions import accept_status, merge_record
from schemas.events import ContentRef, Status, content_hash

MAJORITY = WriteConcern(w="majority", j=True)
#: Claim-checked content above this is refused: MongoDB documents are limited to 16 MiB.
MAX_CONTENT_BYTES = 15 * 1024 * 1024
CAS_ATTEMPTS = 20


def _now() -> datetime:
    """Now, at the millisecond (what a BSON date keeps), so a generation reads back as it was returned."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def connect(settings: MongoSettings) -> MongoClient[Any]:
    if settings.uri is None:
        raise ConfigurationError("RAGBUS_MONGODB_URI is not set")
    client: MongoClient[Any] = MongoClient(settings.uri.get_secret_value(),
                                           serverSelectionTimeoutMS=settings.timeout_ms)
    try:
        client.admin.command("ping")
    except PyMongoError as exc:
        raise ConfigurationError(f"cannot reach MongoDB (RAGBUS_MONGODB_URI) within {settings.timeout_ms} ms: "
                                 f"{type(exc).__name__}") from exc
    return client


def _acl(row: Mapping[str, Any]) -> Acl:
    principals = row.get("principals")
    return Acl(None if principals is None else tuple(principals),
               AclOrder(int(row["acl_version"]), int(row["kind"]), int(row["content_version"])))


def _doc(row: Mapping[str, Any]) -> DocumentRecord:
    return DocumentRecord(row["tenant"], row["document_id"], int(row["version"]), Status(row["status"]),
                          int(row.get("chunks", 0)), row.get("error", ""), row.get("content_hash", ""),
                          row.get("title", ""), row.get("source", ""), row.get("metadata") or {},
                          row.get("content_type", "text/plain"))


GENERATIONS_ID = "generations"
#: A batch of documents read at once when looking for the ones a generation lacks.
BEHIND_BATCH = 1000


def _generation(record: Mapping[str, Any]) -> Generation:
    created: datetime = record["created_at"]
    if created.tzinfo is None:  # pymongo decodes BSON dates as naive UTC unless the client is tz_aware
        created = created.replace(tzinfo=UTC)
    return Generation(record["name"], Build.from_json(record["build"]), State(record["state"]), created,
                      int(record.get("queued", 0)))


def _record(g: Generation) -> dict[str, Any]:
    return {"name": g.name, "build": g.build.to_json(), "state": g.state.value, "created_at": g.created_at,
            "queued": g.queued}


def _of_generation(generation: str) -> dict[str, Any]:
    """Chunk rows of `generation` (rows written before generations existed carry none: they are the first's)."""
    return {"generation": {"$in": [generation, None]}} if generation == FIRST else {"generation": generation}


def _after(after: tuple[str, str] | None) -> dict[str, Any]:
    """Keys strictly after `after` in (tenant, document_id) order."""
    if after is None:
        return {}
    tenant, document_id = after
    return {"$or": [{"tenant": {"$gt": tenant}}, {"tenant": tenant, "document_id": {"$gt": document_id}}]}


#: Server error codes the MongoDB retryable-writes specification lists as transient (failover, shutdown,
#: network), plus ExceededTimeLimit and MaxTimeMSExpired.
RETRYABLE_CODES = frozenset({6, 7, 50, 89, 91, 134, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436})
#: Unauthorized, AuthenticationFailed, and Atlas's AtlasError for a bad user: an operator must act.
AUTH_CODES = frozenset({13, 18, 8000})
P = ParamSpec("P")
R = TypeVar("R")


def classify(exc: PyMongoError | DocumentTooLarge) -> Exception:
    """pymongo's exception classes, error labels and server codes -> what the runner must do."""
    if isinstance(exc, DocumentTooLarge):  # a bson error, not a PyMongoError: this document, not the store
        return PoisonMessageError(f"mongodb: {exc}")
    if (isinstance(exc, ConnectionFailure | ExecutionTimeout | WTimeoutError | WriteConcernError)
            or exc.has_error_label("RetryableWriteError") or exc.has_error_label("TransientTransactionError")
            or (isinstance(exc, OperationFailure) and exc.code in RETRYABLE_CODES)):
        return RetryableError(f"mongodb: {type(exc).__name__}: {str(exc)[:300]}")
    if isinstance(exc, OperationFailure) and exc.code in AUTH_CODES or isinstance(exc, MongoConfigurationError):
        return ConfigurationError(f"MongoDB refused ragbus ({type(exc).__name__}: {str(exc)[:200]}): check the "
                                  "user, password and roles in RAGBUS_MONGODB_URI")
    return exc


def _classified(fn: Callable[P, R]) -> Callable[P, R]:
    """Re-raise a pymongo error as the kernel error it means (a duplicate key is left to the caller)."""
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except DuplicateKeyError:
            raise
        except (PyMongoError, DocumentTooLarge) as exc:
            raise classify(exc) from exc
    return wrapper


class MongoDocumentStore:
    def __init__(self, client: MongoClient[Any], database: str) -> None:
        db = client.get_database(database, write_concern=MAJORITY)
        self._docs = db.get_collection("documents")
        self._chunks = db.get_collection("chunk_ids")
        self._contents = db.get_collection("contents")
        self._answers = db.get_collection("answers")
        self._acls = db.get_collection("acls")
        self._generations = db.get_collection("generations")
        self._progress = db.get_collection("generation_progress")
        self._acls.create_index([("tenant", ASCENDING), ("document_id", ASCENDING)], unique=True)
        self._docs.create_index([("tenant", ASCENDING), ("document_id", ASCENDING)], unique=True)
        self._docs.create_index([("tenant", ASCENDING), ("status", ASCENDING)])
        self._chunks.create_index([("tenant", ASCENDING), ("document_id", ASCENDING), ("version", ASCENDING)])
        self._chunks.create_index([("generation", ASCENDING)])
        self._progress.create_index([("generation", ASCENDING), ("tenant", ASCENDING), ("document_id", ASCENDING)],
                                    unique=True)
        self._answers.create_index([("tenant", ASCENDING), ("query_id", ASCENDING)], unique=True)

    @_classified
    def get_document(self, tenant: str, document_id: str) -> DocumentRecord | None:
        row = self._docs.find_one({"tenant": tenant, "document_id": document_id})
        return None if row is None else _doc(row)

    @_classified
    def apply_status(self, record: DocumentRecord) -> bool:
        key = {"tenant": record.tenant, "document_id": record.document_id}
        for _ in range(CAS_ATTEMPTS):
            row = self._docs.find_one(key)
            current = None if row is None else _doc(row)
            if not accept_status(current, record):
                return False
            m = merge_record(current, record)
            fields = {"version": m.version, "status": m.status.value, "status_rank": m.status.rank,
                      "chunks": m.chunks, "error": m.error, "content_hash": m.content_hash, "title": m.title,
                      "source": m.source, "metadata": dict(m.metadata), "content_type": m.content_type}
            if row is None:
                try:
                    self._docs.insert_one(key | fields)
                    return True
                except DuplicateKeyError:
                    continue  # created concurrently: decide again on the new row
            cas = key | {"version": row["version"], "status_rank": row["status_rank"]}
            if self._docs.update_one(cas, {"$set": fields}).matched_count == 1:
                return True
        raise RetryableError(f"status of {record.document_id} changed {CAS_ATTEMPTS} times while being updated")

    @_classified
    def list_documents(self, tenant: str | None = None, limit: int = 10_000) -> list[DocumentRecord]:
        query = {} if tenant is None else {"tenant": tenant}
        rows = self._docs.find(query).sort([("tenant", ASCENDING), ("document_id", ASCENDING)]).limit(limit)
        return [_doc(r) for r in rows]

    @_classified
    def status_counts(self, tenant: str | None = None) -> dict[str, int]:
        match = [{"$match": {"tenant": tenant}}] if tenant is not None else []
        rows = self._docs.aggregate(match + [{"$group": {"_id": "$status", "n": {"$sum": 1}}}])
        return {r["_id"]: int(r["n"]) for r in rows}

    @_classified
    def indexed_documents(self, after: tuple[str, str] | None = None, limit: int = 1000) -> list[DocumentRecord]:
        rows = self._docs.find({"status": Status.INDEXED.value} | _after(after)).sort(
            [("tenant", ASCENDING), ("document_id", ASCENDING)]).limit(limit)
        return [_doc(r) for r in rows]

    @_classified
    def upsert_chunks(self, chunks: Sequence[ChunkRecord], generation: str = FIRST) -> None:
        if not chunks:
            return
        ops = [ReplaceOne({"_id": c.chunk_id}, {
            "_id": c.chunk_id, "tenant": c.tenant, "document_id": c.document_id, "version": c.version,
            "idx": c.index, "generation": generation}, upsert=True) for c in chunks]
        self._chunks.bulk_write(ops, ordered=False)

    @_classified
    def delete_chunk_versions(self, tenant: str, document_id: str, *, below: int) -> None:
        self._chunks.delete_many({"tenant": tenant, "document_id": document_id, "version": {"$lt": below}})

    @_classified
    def chunk_versions(self, tenant: str, document_id: str, generation: str = FIRST) -> list[tuple[str, int]]:
        rows = self._chunks.find({"tenant": tenant, "document_id": document_id} | _of_generation(generation),
                                 {"_id": 1, "version": 1, "idx": 1})
        return [(r["_id"], int(r["version"])) for r in sorted(rows, key=lambda r: (r["version"], r["idx"]))]

    @_classified
    def count_chunks(self, tenant: str | None = None, generation: str | None = None) -> int:
        """Chunk rows of `tenant` (None: every tenant) in `generation` (None: every generation)."""
        query = ({} if tenant is None else {"tenant": tenant}) | ({} if generation is None else
                                                                   _of_generation(generation))
        return int(self._chunks.count_documents(query))

    # -- index generations (kernel/generations.py) -------------------------------------------------
    def _read_generations(self) -> tuple[int, list[Generation]]:
        """The revision and the generations (revision 0 and none before the first is recorded)."""
        row = self._generations.find_one({"_id": GENERATIONS_ID})
        if row is None:
            return 0, []
        return int(row["rev"]), sorted((_generation(r) for r in row["records"]), key=lambda g: int(g.name[1:]))

    def _change(self, decide: Callable[[list[Generation]], list[Generation]]) -> list[Generation]:
        """Apply `decide` (the generations as read -> as they must be; it raises GenerationConflict to refuse) as
        one compare-and-set on the revision read, deciding again when another writer won the race."""
        for _ in range(CAS_ATTEMPTS):
            rev, current = self._read_generations()
            changed = decide(current)
            records = [_record(g) for g in changed]
            if rev == 0:
                try:
                    self._generations.insert_one({"_id": GENERATIONS_ID, "rev": 1, "records": records})
                    return changed
                except DuplicateKeyError:
                    continue  # recorded concurrently: decide again on what was recorded
            if self._generations.update_one({"_id": GENERATIONS_ID, "rev": rev},
                                            {"$set": {"rev": rev + 1, "records": records}}).matched_count == 1:
                return changed
        raise RetryableError(f"the generations changed {CAS_ATTEMPTS} times while being updated")

    @_classified
    def generations(self) -> list[Generation]:
        return self._read_generations()[1]

    @_classified
    def ensure_first(self, build: Build) -> list[Generation]:
        for _ in range(CAS_ATTEMPTS):
            rev, current = self._read_generations()
            if rev:
                return current
            first = Generation(FIRST, build, State.SERVING, _now())
            try:
                self._generations.insert_one({"_id": GENERATIONS_ID, "rev": 1, "records": [_record(first)]})
                return [first]
            except DuplicateKeyError:
                continue  # another stage recorded the first concurrently: read what it recorded
        raise RetryableError("the generations changed while recording the first")

    @_classified
    def start_generation(self, build: Build, queued: int) -> Generation:
        # the name follows every name ever used, kept as `last` in the same document (a dropped name is not reused)
        for _ in range(CAS_ATTEMPTS):
            row = self._generations.find_one({"_id": GENERATIONS_ID})
            rev, current = self._read_generations()
            refuse_start(current)  # nothing recorded: nothing serving
            if row is None or int(row["rev"]) != rev:
                continue  # changed between the two reads
            last = max([int(row.get("last", 0)), *(int(g.name[1:]) for g in current)])
            started = Generation(f"g{last + 1}", build, State.BUILDING, _now(), queued)
            records = [_record(g) for g in [*current, started]]
            if self._generations.update_one({"_id": GENERATIONS_ID, "rev": rev}, {"$set": {
                    "rev": rev + 1, "records": records, "last": last + 1}}).matched_count == 1:
                return started
        raise RetryableError(f"the generations changed {CAS_ATTEMPTS} times while being updated")

    @_classified
    def set_queued(self, name: str, queued: int) -> None:
        def decide(current: list[Generation]) -> list[Generation]:
            if all(g.name != name for g in current):
                raise GenerationConflict(f"no generation {name} is recorded")
            return [dataclasses.replace(g, queued=queued) if g.name == name else g for g in current]
        self._change(decide)

    @_classified
    def switch(self, name: str) -> None:
        def decide(current: list[Generation]) -> list[Generation]:
            refuse_switch(current, name)
            return [dataclasses.replace(g, state=State.SERVING) if g.name == name else
                    dataclasses.replace(g, state=State.OLD) if g.state is State.SERVING else g for g in current]
        self._change(decide)

    @_classified
    def rollback(self) -> str:
        def decide(current: list[Generation]) -> list[Generation]:
            refuse_rollback(current)
            swap = {State.SERVING: State.OLD, State.OLD: State.SERVING}
            return [dataclasses.replace(g, state=swap.get(g.state, g.state)) for g in current]
        return next(g.name for g in self._change(decide) if g.state is State.SERVING)

    @_classified
    def drop_generation(self, name: str) -> None:
        """The record goes first (one atomic write), then the progress and chunk rows. A drop interrupted
        between the two is finished by the next drop of the same name, which refuses only after deleting."""
        rev, current = self._read_generations()
        if rev and all(g.name != name for g in current):
            self._delete_rows(name)  # what an interrupted drop left
        def decide(current: list[Generation]) -> list[Generation]:
            refuse_drop(current, name)
            return [g for g in current if g.name != name]
        self._change(decide)
        self._delete_rows(name)

    def _delete_rows(self, name: str) -> None:
        self._progress.delete_many({"generation": name})
        self._chunks.delete_many(_of_generation(name))

    @_classified
    def mark_indexed(self, name: str, tenant: str, document_id: str, version: int) -> None:
        """Ignored for a generation not recorded (dropped meanwhile: its progress must not come back)."""
        if all(g.name != name for g in self._read_generations()[1]):
            return
        key = {"generation": name, "tenant": tenant, "document_id": document_id}
        for _ in range(CAS_ATTEMPTS):
            try:  # $max keeps the highest version; two first marks racing make one upsert fail: go again
                self._progress.update_one(key, {"$max": {"version": version}}, upsert=True)
                return
            except DuplicateKeyError:
                continue
        raise RetryableError(f"the progress of {document_id} changed {CAS_ATTEMPTS} times while being updated")

    @_classified
    def indexed_version(self, name: str, tenant: str, document_id: str) -> int | None:
        row = self._progress.find_one({"generation": name, "tenant": tenant, "document_id": document_id})
        return None if row is None else int(row["version"])

    @_classified
    def progress(self, name: str) -> Progress:
        """Two scans with projections (no join: not every server speaking the protocol has $lookup): the
        generation's progress into memory, then the indexed documents' versions against it."""
        have = {(r["tenant"], r["document_id"]): int(r["version"]) for r in self._progress.find(
            {"generation": name}, {"_id": 0, "tenant": 1, "document_id": 1, "version": 1})}
        total = done = 0
        for r in self._docs.find({"status": Status.INDEXED.value}, {"_id": 0, "tenant": 1, "document_id": 1,
                                                                   "version": 1}):
            total += 1
            done += have.get((r["tenant"], r["document_id"]), -1) >= int(r["version"])
        return Progress(done, total)

    @_classified
    def behind(self, name: str, limit: int, after: tuple[str, str] | None = None) -> list[tuple[str, str]]:
        """Indexed documents in key order, a batch at a time, each batch against the generation's progress rows
        of its documents."""
        out: list[tuple[str, str]] = []
        while len(out) < limit:
            batch = list(self._docs.find({"status": Status.INDEXED.value} | _after(after),
                                         {"_id": 0, "tenant": 1, "document_id": 1, "version": 1}).sort(
                [("tenant", ASCENDING), ("document_id", ASCENDING)]).limit(max(limit, BEHIND_BATCH)))
            if not batch:
                break
            have = {(r["tenant"], r["document_id"]): int(r["version"]) for r in self._progress.find(
                {"generation": name, "tenant": {"$in": list({r["tenant"] for r in batch})},
                 "document_id": {"$in": [r["document_id"] for r in batch]}},
                {"_id": 0, "tenant": 1, "document_id": 1, "version": 1})}
            out += [(r["tenant"], r["document_id"]) for r in batch
                    if have.get((r["tenant"], r["document_id"]), -1) < int(r["version"])]
            after = (batch[-1]["tenant"], batch[-1]["document_id"])
        return out[:limit]

    @_classified
    def put_content(self, data: bytes) -> ContentRef:
        if len(data) > MAX_CONTENT_BYTES:
            raise ValueError(f"content of {len(data)} bytes is over the MongoDB store's {MAX_CONTENT_BYTES}")
        ref = ContentRef(sha256=content_hash(data), size=len(data))
        # content-addressed: a stored copy is the same bytes, so an insert that finds one is done (and a plain
        # insert is what every server speaking the protocol handles: nx-27017 cannot replace a binary field)
        with contextlib.suppress(DuplicateKeyError):
            self._contents.insert_one({"_id": ref.sha256, "size": ref.size, "data": Binary(data)})
        return ref

    @_classified
    def get_content(self, ref: ContentRef) -> bytes:
        row = self._contents.find_one({"_id": ref.sha256})
        if row is None:
            raise KeyError(f"no stored content with sha256 {ref.sha256}")
        return bytes(row["data"])

    @_classified
    def get_acl(self, tenant: str, document_id: str) -> Acl | None:
        row = self._acls.find_one({"tenant": tenant, "document_id": document_id})
        return None if row is None else _acl(row)

    @_classified
    def apply_acl(self, tenant: str, document_id: str, acl: Acl) -> Acl:
        """A compare-and-set on the order key read, as apply_status does: concurrent writers converge."""
        key = {"tenant": tenant, "document_id": document_id}
        o = acl.order
        fields = {"principals": None if acl.principals is None else list(acl.principals),
                  "acl_version": o.acl_version, "kind": o.kind, "content_version": o.content_version}
        for _ in range(CAS_ATTEMPTS):
            row = self._acls.find_one(key)
            if row is not None and _acl(row).order >= o:
                return _acl(row)
            if row is None:
                try:
                    self._acls.insert_one(key | fields)
                    return acl
                except DuplicateKeyError:
                    continue
            cas = key | {"acl_version": row["acl_version"], "kind": row["kind"],
                         "content_version": row["content_version"]}
            if self._acls.update_one(cas, {"$set": fields}).matched_count == 1:
                return acl
        raise RetryableError(f"the ACL of {document_id} changed {CAS_ATTEMPTS} times while being updated")

    @_classified
    def get_answer(self, tenant: str, query_id: str) -> str | None:
        row = self._answers.find_one({"tenant": tenant, "query_id": query_id})
        return None if row is None else str(row["answer"])

    @_classified
    def put_answer(self, tenant: str, query_id: str, answer_json: str) -> str:
        """Insert unless an answer is stored already (the query id is the idempotency key, a unique index);
        returns whichever answer is stored. A plain insert, and a read only when another answerer won: one
        round trip in the usual case, and no reliance on upsert-with-$setOnInsert semantics, which servers
        speaking the wire protocol do not all share."""
        try:
            self._answers.insert_one({"tenant": tenant, "query_id": query_id, "answer": answer_json})
            return answer_json
        except DuplicateKeyError:  # stored already: a redelivery, or a concurrent answerer won the race
            row = self._answers.find_one({"tenant": tenant, "query_id": query_id})
        return str(row["answer"]) if row else answer_json

    @_classified
    def delete_answers(self, tenant: str, query_ids: Sequence[str]) -> None:
        if query_ids:
            self._answers.delete_many({"tenant": tenant, "query_id": {"$in": list(query_ids)}})

    def close(self) -> None:
        """The client is shared (see wiring); closing it is the owner's job."""


class MongoEmbeddingCache:
    def __init__(self, client: MongoClient[Any], database: str) -> None:
        self._col = client.get_database(database, write_concern=WriteConcern(w=1)).get_collection("embeddings")

    @_classified
    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        return {r["_id"]: bytes(r["v"]) for r in self._col.find({"_id": {"$in": list(keys)}})}

    @_classified
    def put_many(self, items: Mapping[str, bytes]) -> None:
        if items:
            # w=1: a lost cache entry only costs a re-embedding
            self._col.bulk_write([ReplaceOne({"_id": k}, {"_id": k, "v": Binary(v)}, upsert=True)
                                  for k, v in items.items()], ordered=False)


class MongoAnswerCache:
    """The answer cache in a collection of its own (not the answer log, whose keys are the clients' query ids)."""

    def __init__(self, client: MongoClient[Any], database: str) -> None:
        # w=1: a lost entry only costs a model call
        self._col = client.get_database(database, write_concern=WriteConcern(w=1)).get_collection("answer_cache")
        self._col.create_index([("tenant", ASCENDING), ("key", ASCENDING)], unique=True)

    @_classified
    def get(self, tenant: str, key: str) -> str | None:
        row = self._col.find_one({"tenant": tenant, "key": key})
        return None if row is None else str(row["answer"])

    @_classified
    def put(self, tenant: str, key: str, answer_json: str) -> None:
        with contextlib.suppress(DuplicateKeyError):  # cached already: the first entry stays
            self._col.insert_one({"tenant": tenant, "key": key, "answer": answer_json})

    @_classified
    def delete(self, tenant: str, keys: Sequence[str]) -> None:
        if keys:
            self._col.delete_many({"tenant": tenant, "key": {"$in": list(keys)}})
