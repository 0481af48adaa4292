"""Production vector index on Weaviate (weaviate-client v4).

Selected by RAGBUS_WEAVIATE_URL. At start-up it checks that Weaviate is ready and recent enough, then
creates its collection or checks an existing one: schema changes are additive (missing properties are
added); anything incompatible is reported, never altered.

Tenant isolation uses Weaviate's native multi-tenancy, not a filter: every tenant is its own shard,
every read and write names its tenant (`with_tenant`), so a forgotten filter cannot leak another
tenant's chunks and deleting a tenant is cheap. Tenants are created on first write
(auto_tenant_creation).

Writes use deterministic uuid5 ids (schemas.events.chunk_uuid) and read back per-object errors; the
indexer retries or dead-letters each refused object with Weaviate's message (weaviate-python-client
issues #577 and #885: batch errors are easy to drop).

Search returns each retriever's own candidates (near_vector by cosine; BM25), and retrieval/ fuses them the
same way for every backend. Weaviate has no stemming (weaviate#2439), so the adapter indexes and queries
analysed copies of the text and of the heading (title and section path), stemmed and without stop words
by retrieval/keywords.py exactly as LanceDB's full-text index does natively, and searches them with
whitespace tokenisation and the heading weighted (`heading_kw^w`). Chunks and section entries share the
collection (`level`). The collection's description records the embedding model (and passage prefix) its
vectors came from; a collection built with another model is refused at start-up (a generation's collection is
always opened with the model recorded for that generation, so a mismatch means the collection was changed by
hand: a model change is a new generation, `ragbus reindex start --model NAME`). Objects written before
these properties existed have no `level` nor analysed text: re-ingest such a tenant after upgrading.
Permissions: each object's `acl` holds its document's visibility tokens (kernel/permissions.py), and every
read filters on them (`ContainsAny`) inside the query. Objects written before the property existed have no
tokens and match no filter: re-ingest such a tenant (docs/security.md, "Upgrading").

Index generations (kernel/generations.py): each generation is a collection of its own, RAGBUS_WEAVIATE_COLLECTION
for the first (the collection of every deployment from before generations) and the same name with the
generation's suffix for the others (`RagbusChunk_g2`); `drop()` deletes a generation's collection. Weaviate
capitalises the first letter of a class name: the adapter does it itself (`collection_name`), so the name it
creates, queries, reports and drops is the one Weaviate holds.

Failures are classified by the client's exception types and the gRPC status code underneath them, never
by message text (`classify`): unreachable, timing out, overloaded -> RetryableError; refused credentials
or permissions -> ConfigurationError; anything else is permanent and surfaces as itself (the runner pins
it on its event), so a permanent error is never retried forever. (The client itself retries UNAVAILABLE
searches and batches with exponential backoff for about a minute before it raises.) Real Weaviate
reports a read of a tenant that does not exist yet as a plain gRPC UNKNOWN error; so reads first ask
whether the tenant exists (once per tenant and process, a REST HEAD) instead of recognising that error.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast
from urllib.parse import urlparse

import grpc
import weaviate
from weaviate.classes.config import Configure, DataType, Property, Tokenization, VectorDistances
from weaviate.classes.data import DataObject
from weaviate.classes.init import AdditionalConfig, Auth, Timeout
from weaviate.classes.query import Filter, MetadataQuery
from weaviate.exceptions import (
    AuthenticationFailedError,
    InsufficientPermissionsError,
    UnexpectedStatusCodeError,
    WeaviateBaseError,
    WeaviateConnectionError,
    WeaviateGRPCUnavailableError,
    WeaviateInsertManyAllFailedError,
    WeaviateRetryError,
    WeaviateTimeoutError,
)

from infra.settings import WeaviateSettings
from kernel.errors import ConfigurationError, RetryableError
from kernel.generations import FIRST, NAME_PATTERN, suffix
from kernel.permissions import PUBLIC_ONLY
from kernel.ports import Candidates, ChunkRecord, Level, Metadata, SearchHit, SearchRequest, Vector, WriteFailure
from retrieval.keywords import analyse

from .rows import checked, conditions, meta_terms

MIN_VERSION = (1, 27)
VECTOR = "chunk"
TEXT = Tokenization.WORD
PROPERTIES = [
    Property(name="document_id", data_type=DataType.TEXT, tokenization=Tokenization.FIELD, index_searchable=False),
    Property(name="version", data_type=DataType.INT),
    Property(name="idx", data_type=DataType.INT),
    Property(name="text", data_type=DataType.TEXT, tokenization=TEXT),
    Property(name="title", data_type=DataType.TEXT, tokenization=TEXT),
    Property(name="section", data_type=DataType.TEXT, tokenization=TEXT),
    Property(name="level", data_type=DataType.TEXT, tokenization=Tokenization.FIELD, index_searchable=False),
    Property(name="section_no", data_type=DataType.INT),
    Property(name="text_kw", data_type=DataType.TEXT, tokenization=Tokenization.WHITESPACE),
    # visibility tokens (kernel/permissions.py), matched exactly by the permission filter (ContainsAny)
    Property(name="acl", data_type=DataType.TEXT_ARRAY, tokenization=Tokenization.FIELD, index_searchable=False),
    Property(name="heading_kw", data_type=DataType.TEXT, tokenization=Tokenization.WHITESPACE),
    Property(name="section_path", data_type=DataType.TEXT_ARRAY, tokenization=Tokenization.FIELD,
             index_searchable=False),
    Property(name="source", data_type=DataType.TEXT, tokenization=Tokenization.FIELD, index_searchable=False),
    Property(name="meta", data_type=DataType.TEXT_ARRAY, tokenization=Tokenization.FIELD, index_searchable=False),
    Property(name="metadata", data_type=DataType.TEXT, index_filterable=False, index_searchable=False),
]
RETURNED = ["document_id", "version", "idx", "text", "title", "section_path", "metadata", "level", "section_no"]
MODEL_MARK = "ragbus embedding model: "


def connect(settings: WeaviateSettings) -> weaviate.WeaviateClient:
    assert settings.url is not None
    url = urlparse(settings.url)
    secure = url.scheme == "https"
    try:
        client = weaviate.connect_to_custom(
            http_host=url.hostname or "localhost", http_port=url.port or (443 if secure else 8080), http_secure=secure,
            grpc_host=url.hostname or "localhost", grpc_port=settings.grpc_port, grpc_secure=secure,
            auth_credentials=Auth.api_key(settings.api_key.get_secret_value()) if settings.api_key else None,
            additional_config=AdditionalConfig(timeout=Timeout(init=settings.timeout_s, query=settings.timeout_s,
                                                               insert=settings.timeout_s)))
    except WeaviateBaseError as exc:
        raise ConfigurationError(f"cannot reach Weaviate at {settings.url} (gRPC port {settings.grpc_port}): "
                                 f"{str(exc).splitlines()[0][:200]}") from exc
    if not client.is_ready():
        client.close()
        raise ConfigurationError(f"Weaviate at {settings.url} is not ready")
    version = tuple(int(p) for p in str(client.get_meta().get("version", "0.0")).split(".")[:2])
    if version < MIN_VERSION:
        client.close()
        raise ConfigurationError(f"Weaviate {'.'.join(map(str, version))} at {settings.url} is too old: ragbus "
                                 f"needs {'.'.join(map(str, MIN_VERSION))} or newer")
    return client


def collection_name(collection: str, generation: str = FIRST) -> str:
    """The generation's collection as Weaviate names it (first letter capitalised, as the server and the client
    both do): `collection` for the first generation, `collection_g2` and so on for the others."""
    if not NAME_PATTERN.match(generation):
        raise ValueError(f"not a generation name: {generation!r} (g1, g2, ...)")
    name = collection + suffix(generation)
    return name[:1].upper() + name[1:]


def _vector(v: Vector) -> Sequence[float]:
    """The client takes numpy arrays (weaviate.util.get_vector converts them in C), though its hints say
    Sequence: no Python-level list of floats is built here."""
    return cast(Sequence[float], v)


_TRANSIENT_GRPC = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                             grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED})
_REFUSED_GRPC = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})


def _grpc_code(exc: BaseException) -> grpc.StatusCode | None:
    """The status code of the gRPC call the client's exception was raised from, if any."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, grpc.Call):
            code = seen.code()
            return code if isinstance(code, grpc.StatusCode) else None
        seen = seen.__cause__ or seen.__context__
    return None


def classify(exc: WeaviateBaseError) -> Exception:
    """The client's exception types and gRPC/HTTP status codes -> what the runner must do."""
    code = _grpc_code(exc)
    status = exc.status_code if isinstance(exc, UnexpectedStatusCodeError) else None
    if (isinstance(exc, AuthenticationFailedError | InsufficientPermissionsError) or code in _REFUSED_GRPC
            or status in (401, 403)):
        return ConfigurationError(f"Weaviate refused ragbus ({type(exc).__name__}): check RAGBUS_WEAVIATE_API_KEY "
                                  "and the key's permissions on the collection")
    if (isinstance(exc, WeaviateConnectionError | WeaviateTimeoutError | WeaviateGRPCUnavailableError
                   | WeaviateRetryError) or code in _TRANSIENT_GRPC or (status is not None and
                                                                        (status == 429 or status >= 500))):
        return RetryableError(f"weaviate: {type(exc).__name__}: {str(exc)[:300]}")
    return exc


class WeaviateVectorIndex:
    def __init__(self, client: weaviate.WeaviateClient, collection: str, dim: int, model: str | None = None,
                 generation: str = FIRST) -> None:
        self._client = client
        self.generation = generation
        #: This generation's collection, as Weaviate names it.
        self.name = self._name = collection_name(collection, generation)
        self._dim = dim
        self._model = model
        self._ensure_collection()
        self._collection = client.collections.get(self._name)
        self._tenants: set[str] = set()
        #: The keyword query runs here while the caller's thread runs the vector query (the sync client is
        #: thread-safe and waits on gRPC with the GIL released): a search costs the slower of the two.
        self._keyword_pool = ThreadPoolExecutor(2, thread_name_prefix="ragbus-weaviate-bm25")

    def _ensure_collection(self) -> None:
        if not self._client.collections.exists(self._name):
            self._client.collections.create(
                self._name,
                description=MODEL_MARK + self._model if self._model else None,
                properties=PROPERTIES,
                vector_config=[Configure.Vectors.self_provided(
                    name=VECTOR, vector_index_config=Configure.VectorIndex.hnsw(
                        distance_metric=VectorDistances.COSINE))],
                inverted_index_config=Configure.inverted_index(bm25_b=0.75, bm25_k1=1.2),
                multi_tenancy_config=Configure.multi_tenancy(enabled=True, auto_tenant_creation=True,
                                                             auto_tenant_activation=True))
            return
        config = self._client.collections.get(self._name).config.get()
        problems = []
        if not config.multi_tenancy_config.enabled:
            problems.append("multi-tenancy is disabled")
        if VECTOR not in (config.vector_config or {}):
            problems.append(f"it has no named vector {VECTOR!r}")
        existing = {p.name: p for p in config.properties}
        for prop in PROPERTIES:
            have = existing.get(prop.name)
            if have is not None and have.data_type.value != prop.dataType.value:
                problems.append(f"property {prop.name} is {have.data_type.value}, ragbus needs {prop.dataType.value}")
        recorded = (config.description or "").partition(MODEL_MARK)[2]
        if self._model and recorded and recorded != self._model:
            # A generation's collection is opened with the model recorded for that generation: a mismatch means
            # the collection was replaced or altered by hand, never a settings change (that builds a generation).
            raise ConfigurationError(
                f"the Weaviate collection {self._name} (generation {self.generation}) holds vectors of the "
                f"embedding model {recorded!r}, but generation {self.generation} is recorded with {self._model!r} "
                "(model with its passage prefix): vectors of two models cannot be compared, so the collection was "
                "changed by hand; restore it, and change the model with `ragbus reindex start --model NAME` "
                "(docs/operations.md, \"Index generations\")")
        if problems:
            raise ConfigurationError(f"the Weaviate collection {self._name} (generation {self.generation}) is "
                                     f"incompatible: {'; '.join(problems)}; "
                                     "ragbus never alters it: drop it or set RAGBUS_WEAVIATE_COLLECTION")
        if self._model and not recorded:  # a collection from before models were recorded adopts this one
            self._client.collections.get(self._name).config.update(description=MODEL_MARK + self._model)
        for prop in PROPERTIES:  # additive schema change: add what is missing
            if prop.name not in existing:
                self._client.collections.get(self._name).config.add_property(prop)

    def upsert(self, chunks: Sequence[ChunkRecord]) -> list[WriteFailure]:
        valid, failures = checked(chunks, self._dim)
        by_tenant: dict[str, dict[str, ChunkRecord]] = {}
        for c in valid:
            by_tenant.setdefault(c.tenant, {})[c.chunk_id] = c
        for tenant, group in by_tenant.items():
            batch = list(group.values())
            objects = [DataObject(uuid=c.chunk_id, vector={VECTOR: _vector(c.vector)}, properties={
                "document_id": c.document_id, "version": c.version, "idx": c.index, "text": c.text,
                "title": c.title, "section": " > ".join(c.section_path), "section_path": list(c.section_path),
                "source": c.source, "meta": meta_terms(c.metadata), "metadata": json.dumps(dict(c.metadata)),
                "level": c.level.value, "section_no": c.section, "text_kw": analyse(c.text),
                "heading_kw": analyse("\n".join([c.title, *c.section_path])), "acl": list(c.acl)})
                for c in batch]
            try:
                result = self._collection.with_tenant(tenant).data.insert_many(objects)
            except WeaviateInsertManyAllFailedError as exc:  # raised when every object failed
                failures += [WriteFailure(c.chunk_id, str(exc)[:500]) for c in batch]
                continue
            except WeaviateBaseError as exc:
                raise classify(exc) from exc
            self._tenants.add(tenant)
            failures += [WriteFailure(batch[i].chunk_id, err.message) for i, err in result.errors.items()]
        return failures

    def _exists(self, tenant: str) -> bool:
        """Whether the tenant exists (a tenant is created by its first write; positive answers are kept)."""
        if tenant not in self._tenants:
            try:
                if not self._collection.tenants.exists(tenant):
                    return False
            except WeaviateBaseError as exc:
                raise classify(exc) from exc
            self._tenants.add(tenant)
        return True

    def delete_versions(self, tenant: str, document_id: str, *, below: int) -> None:
        if not self._exists(tenant):
            return  # nothing was ever written for this tenant
        where = Filter.by_property("document_id").equal(document_id) & Filter.by_property("version").less_than(below)
        try:
            self._collection.with_tenant(tenant).data.delete_many(where=where)
        except WeaviateBaseError as exc:
            raise classify(exc) from exc

    def set_acl(self, tenant: str, document_id: str, acl: tuple[str, ...]) -> None:
        """Each entry's `acl` property updated in place (a PATCH per object: its vector is not sent again)."""
        if not self._exists(tenant):
            return
        data = self._collection.with_tenant(tenant)
        try:
            found = data.query.fetch_objects(filters=Filter.by_property("document_id").equal(document_id),
                                             limit=100_000, return_properties=["version"])
            for o in found.objects:
                data.data.update(uuid=o.uuid, properties={"acl": list(acl)})
        except WeaviateBaseError as exc:
            raise classify(exc) from exc

    def _filters(self, filters: Metadata | None, levels: Sequence[Level], visible: tuple[str, ...]) -> Any:
        parts = [Filter.any_of([Filter.by_property("level").equal(lv.value) for lv in levels])
                 if len(levels) > 1 else Filter.by_property("level").equal(levels[0].value),
                 Filter.by_property("acl").contains_any(list(visible))]
        for cond in conditions(filters):
            parts.append(Filter.by_property("meta").contains_any([cond.value]) if cond.field == "meta"
                         else Filter.by_property(cond.field).equal(cond.value))
        return Filter.all_of(parts) if len(parts) > 1 else parts[0]

    def search(self, tenant: str, request: SearchRequest) -> Candidates:
        if not self._exists(tenant) or not request.visible:
            return Candidates()  # a tenant that never wrote anything has nothing to find; an asker who may read
        query = self._collection.with_tenant(tenant).query  # nothing finds nothing
        where = self._filters(request.filters, request.levels, request.visible)
        limit = request.candidates * len(request.levels)
        analysed = analyse(request.text)

        def bm25() -> list[SearchHit]:
            fields = ["text_kw"] + ([f"heading_kw^{request.heading_weight:g}"] if request.heading_weight else [])
            found = query.bm25(query=analysed, query_properties=fields, limit=limit, filters=where,
                               return_properties=RETURNED, return_metadata=MetadataQuery(score=True))
            return [_hit(o, float(o.metadata.score or 0.0)) for o in found.objects]

        try:
            pending = self._keyword_pool.submit(bm25) if request.keyword and analysed else None
            dense: list[SearchHit] = []
            if request.dense:
                found = query.near_vector(near_vector=_vector(request.vector), target_vector=VECTOR, limit=limit,
                                          filters=where, return_properties=RETURNED,
                                          return_metadata=MetadataQuery(distance=True))
                dense = [_hit(o, 1.0 - float(o.metadata.distance or 0.0)) for o in found.objects]
            keyword = pending.result() if pending is not None else []
        except WeaviateBaseError as exc:
            raise classify(exc) from exc
        return Candidates(dense, keyword)

    def section_chunks(self, tenant: str, sections: Sequence[tuple[str, int, int]], per_section: int,
                       visible: tuple[str, ...] = PUBLIC_ONLY) -> list[SearchHit]:
        if not sections or not visible or not self._exists(tenant):
            return []
        hits: list[SearchHit] = []
        try:
            for d, v, n in sections:  # the first chunks of a section are its lowest indexes
                where = (Filter.by_property("level").equal(Level.CHUNK.value)
                         & Filter.by_property("document_id").equal(d) & Filter.by_property("version").equal(v)
                         & Filter.by_property("section_no").equal(n)
                         & Filter.by_property("acl").contains_any(list(visible)))
                found = self._collection.with_tenant(tenant).query.fetch_objects(
                    filters=where, limit=10_000, return_properties=RETURNED)
                hits += sorted((_hit(o, 0.0) for o in found.objects), key=lambda h: h.index)[:per_section]
        except WeaviateBaseError as exc:
            raise classify(exc) from exc
        return hits

    def chunk_versions(self, tenant: str, document_id: str) -> list[tuple[str, int]]:
        if not self._exists(tenant):
            return []
        try:
            result = self._collection.with_tenant(tenant).query.fetch_objects(
                filters=Filter.by_property("document_id").equal(document_id)
                & Filter.by_property("level").equal(Level.CHUNK.value), limit=10_000,
                return_properties=["version", "idx"])
        except WeaviateBaseError as exc:
            raise classify(exc) from exc
        rows = [(str(o.uuid), cast(dict[str, Any], o.properties)) for o in result.objects]
        rows.sort(key=lambda r: (int(r[1]["version"]), int(r[1]["idx"])))
        return [(u, int(p["version"])) for u, p in rows]

    def count(self, tenant: str | None = None) -> int:
        try:
            tenants = [tenant] if tenant is not None else list(self._collection.tenants.get())
            chunks = Filter.by_property("level").equal(Level.CHUNK.value)
            return sum(int(self._collection.with_tenant(t).aggregate.over_all(total_count=True, filters=chunks)
                           .total_count or 0) for t in tenants if self._exists(t))
        except WeaviateBaseError as exc:
            raise classify(exc) from exc

    def maintain(self, force: bool = False) -> None:
        """Weaviate maintains its indexes itself."""

    def drop(self) -> None:
        """Deletes this generation's collection (the other generations' stay): constructing the generation's
        index again creates an empty one."""
        try:
            self._client.collections.delete(self._name)
        except WeaviateBaseError as exc:
            raise classify(exc) from exc
        self._tenants.clear()

    def close(self) -> None:
        self._keyword_pool.shutdown(wait=False)
        self._client.close()


def _hit(o: Any, score: float) -> SearchHit:
    p = cast(dict[str, Any], o.properties)
    return SearchHit(str(o.uuid), p["document_id"], int(p["version"]), int(p["idx"]), p["text"], score,
                     p.get("title") or "", tuple(p.get("section_path") or ()), json.loads(p.get("metadata") or "{}"),
                     int(p.get("section_no") or 0), Level(p.get("level") or Level.CHUNK.value))
