"""Embedded vector index on LanceDB: on disk in the data directory, survives restarts.

One table holds chunks and section entries (`level`). Vector search is cosine (exact until the table is
large enough for an IVF-HNSW index); keyword search is BM25 through Lance's native full-text indexes,
one over the text and one over the heading (title and section path), both with English stemming and
stop words; the query is their weighted sum (`heading_weight` times the heading's BM25). Metadata
filters and permissions (`acl`, the entry's visibility tokens: kernel/permissions.py) are SQL prefilters,
applied before ranking, so an asker who may read few documents still gets the best of those. Fusion is
retrieval's (retrieval/), not this adapter's. Tenant isolation: every query is prefiltered on `tenant`, which
the port makes a required argument; there is no search path without it.

Index generations (kernel/generations.py): each generation is a table of its own in the same directory,
`chunks` for the first (the table of every data directory from before generations) and `chunks_<name>`
(`chunks_g2`) for the others; `drop()` deletes a generation's table.

The vector column records the model (and passage prefix) its vectors came from. A generation's index is always
opened with the model recorded for that generation, so a table holding another model's vectors means the data
directory was changed by hand: it is refused at start-up, even when the dimensions agree (a model change is a
new generation: `ragbus reindex start --model NAME`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import lancedb
import numpy as np
import pyarrow as pa
import tenacity
from lancedb.index import FTS, BTree, LabelList
from lancedb.query import BooleanQuery, FullTextQuery, MatchQuery, Occur

from infra.ops import logs
from kernel.errors import ConfigurationError, RetryableError
from kernel.generations import FIRST, NAME_PATTERN, suffix
from kernel.permissions import PUBLIC_ONLY
from kernel.ports import Candidates, ChunkRecord, Level, Metadata, SearchHit, SearchRequest, WriteFailure

from . import disk
from .lance_maintenance import Maintenance
from .rows import checked, conditions, meta_terms

log = logs.get(__name__)
#: The first generation's table (the one table of every data directory from before generations); the others
#: add their suffix (`table_name`).
TABLE = "chunks"
READ_CONSISTENCY = timedelta(seconds=0.1)
MODEL_KEY = "ragbus.model"
#: Full-text indexes: English stemming and stop words (Lance's defaults, stated so a default change
#: upstream cannot change ragbus's keyword side silently).
KEYWORD_INDEX = {"base_tokenizer": "simple", "language": "English", "stem": True, "remove_stop_words": True,
                 "lower_case": True, "ascii_folding": True, "max_token_length": 40}
INDEXES = {"text_idx", "heading_idx", "document_id_idx", "acl_idx"}
#: What a search reads back (not the vector: converting it costs more than the search).
RETURNED = ["chunk_id", "document_id", "version", "idx", "level", "section", "text", "title", "section_path",
            "metadata"]
#: The vector search re-ranks this many times its limit by exact cosine after the IVF-HNSW-SQ index's
#: approximate (scalar-quantised) distances: recall@10 against exact search went from 0.987 to 1.000 on the
#: FAQ questions at 24,000 rows for ~4 ms (bench/scale.py, bench/RESULTS.md). Without an ANN index the search
#: is exact and this does nothing.
REFINE_FACTOR = 2
#: Attempts at opening (creating, upgrading, indexing) the table while other processes may race at it.
OPEN_ATTEMPTS = 20
#: Columns added since the first schema, with the value old rows get.
ADDED = {"level": "'chunk'", "section": "CAST(0 AS INT)", "heading": "title", "acl": "make_array('*')"}


class _IndexesPending(Exception):
    """The table exists without all its indexes, which another process may be building right now."""


def table_name(generation: str = FIRST) -> str:
    """The generation's table: `chunks` for the first, `chunks_g2` and so on for the others."""
    if not NAME_PATTERN.match(generation):
        raise ValueError(f"not a generation name: {generation!r} (g1, g2, ...)")
    return TABLE + suffix(generation)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def heading(title: str, section_path: Sequence[str]) -> str:
    return "\n".join([title, *section_path]).strip()


T = TypeVar("T")


class _Searches:
    """LanceDB's async API on an event loop of its own, so that one search runs its vector and full-text
    queries at once inside LanceDB: one trip through Python for both, instead of two threads contending for
    the GIL and for the sync API's single loop (measured at 24,000 rows: 11 ms against 18 ms). It shares the
    sync connection's session, so both read through one cache of indexes and metadata."""

    def __init__(self, path: Path, session: Any, table: str) -> None:
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="ragbus-lance-search", daemon=True).start()
        self._closing, self._closed = threading.Lock(), False
        self.table: Any = self.run(self._open(path, session, table))
        #: Set by this process's own writes: its next search reads the latest version at once (other processes'
        #: writes are seen within READ_CONSISTENCY), as a search through the writing table itself would.
        self.stale = False

    @staticmethod
    async def _open(path: Path, session: Any, table: str) -> Any:
        db = await lancedb.connect_async(str(path), read_consistency_interval=READ_CONSISTENCY, session=session)
        return await db.open_table(table)

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    def close(self) -> None:
        """Closes the table handle, then stops the loop; once (a second call, or one after `drop`, does nothing:
        work submitted to a stopping loop would never complete)."""
        with self._closing:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(Exception):
            self.run(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _close(self) -> None:
        self.table.close()


class LanceVectorIndex:
    def __init__(self, path: Path, dim: int, model: str | None = None, generation: str = FIRST) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self._path = path
        self.generation = generation
        #: This generation's table in the directory.
        self.name = table_name(generation)
        # A reader in another process (the answerer) looks for a newer table version at most every
        # READ_CONSISTENCY: checking on every search cost ~3 ms per search (two per query), and a write is
        # then searchable at most 0.1 s later. A new connection always starts at the latest version.
        session = lancedb.Session()
        self._db = lancedb.connect(str(path), read_consistency_interval=READ_CONSISTENCY, session=session)
        self._dim = dim
        self._lock = threading.Lock()  # writes of this process, one at a time (merge_insert ids must not race)
        self._schema = pa.schema([
            pa.field("chunk_id", pa.string()), pa.field("tenant", pa.string()),
            pa.field("document_id", pa.string()), pa.field("version", pa.int64()),
            pa.field("idx", pa.int32()), pa.field("level", pa.string()), pa.field("section", pa.int32()),
            pa.field("text", pa.string()), pa.field("title", pa.string()), pa.field("section_path", pa.string()),
            pa.field("heading", pa.string()), pa.field("source", pa.string()),
            pa.field("meta", pa.list_(pa.string())), pa.field("metadata", pa.string()),
            pa.field("acl", pa.list_(pa.string()), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), dim), metadata={MODEL_KEY: model} if model else None),
        ])
        self._table = self._open_or_create(path)
        have = self._table.schema.field("vector").type.list_size
        if have != dim:
            raise ConfigurationError(
                f"the vector index {self._where_am_i()} holds {have}-dim vectors but generation {generation}'s "
                f"model makes {dim}: the data directory was changed by hand; a model change is a new "
                "generation, built with `ragbus reindex start --model NAME` (docs/operations.md, \"Index "
                "generations\")")
        self._check_model(model)
        self._searches = _Searches(path, session, self.name)
        self._maintenance = Maintenance(path, self.name)

    def _where_am_i(self) -> str:
        return f"{self.name!r} at {self._path} (generation {self.generation})"

    def _check_model(self, model: str | None) -> None:
        if model is None:
            return
        recorded = (self._table.schema.field("vector").metadata or {}).get(MODEL_KEY.encode())
        if recorded is None:  # an index from before models were recorded: it adopts the configured one
            with self._lock:
                self._table.update_field_metadata({"path": "vector", "metadata": {MODEL_KEY: model}})
        elif recorded.decode() != model:
            # A generation's index is opened with the model recorded for that generation: a mismatch means the
            # table was replaced or altered by hand, never a settings change (that one builds a new generation).
            raise ConfigurationError(
                f"the vector index {self._where_am_i()} holds vectors of the embedding model "
                f"{recorded.decode()!r}, but generation {self.generation} is recorded with {model!r} (model with "
                "its passage prefix): vectors of two models cannot be compared, so the data directory was changed "
                "by hand; restore it, and change the model with `ragbus reindex start --model NAME` "
                "(docs/operations.md, \"Index generations\")")

    def _open_or_create(self, path: Path) -> Any:
        """Open the table, creating or upgrading it with its indexes once; several processes may race. Every
        step is idempotent, so a step that fails (another process committed first) is simply taken again;
        one that keeps failing is reported with its own error."""
        attempts = 0

        def once() -> Any:
            nonlocal attempts
            attempts += 1
            if self.name not in self._db.list_tables(limit=1000).tables:
                table = self._db.create_table(self.name, schema=self._schema, exist_ok=True)
            else:
                table = self._db.open_table(self.name)
                missing = {n: sql for n, sql in ADDED.items() if n not in table.schema.names}
                if missing:  # upgrade of an older table: new columns, and the old single keyword column goes
                    table.add_columns(missing)
                if "search_text" in table.schema.names:
                    if any(i.name == "search_text_idx" for i in table.list_indices()):
                        table.drop_index("search_text_idx")
                    table.drop_columns(["search_text"])
                if {i.name for i in table.list_indices()} >= INDEXES:
                    return table
                if attempts == 1:
                    raise _IndexesPending  # another process may be building them right now: look again
            table.create_index("text", config=FTS(**KEYWORD_INDEX), replace=True)  # type: ignore[arg-type]
            table.create_index("heading", config=FTS(**KEYWORD_INDEX), replace=True)  # type: ignore[arg-type]
            table.create_index("document_id", config=BTree(), replace=True)
            table.create_index("acl", config=LabelList(), replace=True)  # the permission prefilter
            return table

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(OPEN_ATTEMPTS), wait=tenacity.wait_incrementing(0.2, 0.2, max=2.0),
            retry=tenacity.retry_if_exception_type((RuntimeError, OSError, ValueError, _IndexesPending)))
        try:
            return retrying(once)
        except tenacity.RetryError as exc:
            last = exc.last_attempt.exception()
            raise ConfigurationError(f"could not open or create the vector index {self._where_am_i()} in "
                                     f"{OPEN_ATTEMPTS} attempts: {type(last).__name__}: {str(last)[:300]}") from last

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """A write that fails because of the disk (full, a size limit, failing) is transient; anything else
        surfaces as itself (see infra/stores/disk.py for why the disk is asked, not the message)."""
        try:
            yield
        except (RuntimeError, OSError) as exc:
            why = disk.trouble(self._path)
            if why is not None:
                raise RetryableError(f"the vector index at {self._path} cannot write: {why}") from exc
            raise

    def upsert(self, chunks: Sequence[ChunkRecord]) -> list[WriteFailure]:
        if not chunks:
            return []
        valid, failures = checked(chunks, self._dim)
        rows = [{
            "chunk_id": c.chunk_id, "tenant": c.tenant, "document_id": c.document_id, "version": c.version,
            "idx": c.index, "level": c.level.value, "section": c.section, "text": c.text, "title": c.title,
            "section_path": json.dumps(list(c.section_path)), "heading": heading(c.title, c.section_path),
            "source": c.source, "meta": meta_terms(c.metadata), "metadata": json.dumps(dict(c.metadata)),
            "acl": list(c.acl), "vector": np.asarray(c.vector, dtype=np.float32),
        } for c in valid]
        if rows:
            with self._lock, self._writing():
                data = pa.Table.from_pylist(rows, schema=self._schema).select(self._table.schema.names)
                (self._table.merge_insert("chunk_id").when_matched_update_all()
                 .when_not_matched_insert_all().execute(data))
                self._searches.stale = True
        return failures

    def delete_versions(self, tenant: str, document_id: str, *, below: int) -> None:
        """Removes the document's entries older than `below`. The indexer asks this after every finished version,
        and for a new document there is nothing to remove; LanceDB would still commit a table version for a delete
        that matches nothing, at ~10 ms of CPU (measured at 41,000 rows: most of the indexer's cost per document
        in a bulk ingest), so the rows are counted first (~1 ms through the document_id index)."""
        where = f"tenant = {_quote(tenant)} AND document_id = {_quote(document_id)} AND version < {int(below)}"
        with self._lock, self._writing():
            if not self._table.count_rows(where):
                return
            self._table.delete(where)
            self._searches.stale = True

    def set_acl(self, tenant: str, document_id: str, acl: tuple[str, ...]) -> None:
        where = f"tenant = {_quote(tenant)} AND document_id = {_quote(document_id)}"
        if not self._table.count_rows(where):  # a document not indexed yet: an update would still commit a version
            return
        with self._lock, self._writing():
            self._table.update(where=where, values={"acl": list(acl)})
            self._searches.stale = True

    def _where(self, tenant: str, filters: Metadata | None, levels: Sequence[Level],
               visible: tuple[str, ...]) -> str:
        clauses = [f"tenant = {_quote(tenant)}", _readable(visible)]
        if set(levels) != set(Level):
            clauses.append(f"level IN ({', '.join(_quote(lv.value) for lv in levels)})")
        for cond in conditions(filters):
            clauses.append(f"array_has(meta, {_quote(cond.value)})" if cond.field == "meta"
                           else f"{cond.field} = {_quote(cond.value)}")
        return " AND ".join(clauses)

    def search(self, tenant: str, request: SearchRequest) -> Candidates:
        """Both retrievers' candidates, their queries run concurrently in one LanceDB call."""
        where = self._where(tenant, request.filters, request.levels, request.visible)
        keyword = request.keyword and bool(request.text.strip())
        if not (request.dense or keyword) or not request.visible:
            return Candidates()
        dense, found = self._searches.run(self._both(request, where, request.candidates * len(request.levels),
                                                     keyword))
        return Candidates(_hits(dense, "_distance", lambda distance: 1.0 - distance), _hits(found, "_score"))

    async def _both(self, request: SearchRequest, where: str, limit: int, keyword: bool) -> tuple[Any, Any]:
        table = self._searches.table
        if self._searches.stale:
            self._searches.stale = False
            await table.checkout_latest()
        jobs: list[Any] = []
        if request.dense:
            jobs.append(table.vector_search(np.asarray(request.vector, dtype=np.float32)).column("vector")
                        .distance_type("cosine").where(where).select([*RETURNED, "_distance"]).limit(limit)
                        .refine_factor(REFINE_FACTOR).to_arrow())
        if keyword:
            query: FullTextQuery = MatchQuery(request.text, "text")  # type: ignore[call-arg]  # defaults exist
            if request.heading_weight:  # a sum (BooleanQuery), not MultiMatchQuery's best single field
                heading = MatchQuery(request.text, "heading", boost=request.heading_weight)  # type: ignore[call-arg]
                query = BooleanQuery([(Occur.SHOULD, query), (Occur.SHOULD, heading)])
            fts = await table.search(query, query_type="fts")
            jobs.append(fts.where(where).select([*RETURNED, "_score"]).limit(limit).to_arrow())
        results = list(await asyncio.gather(*jobs))
        return (results.pop(0) if request.dense else None), (results.pop(0) if keyword else None)

    def section_chunks(self, tenant: str, sections: Sequence[tuple[str, int, int]], per_section: int,
                       visible: tuple[str, ...] = PUBLIC_ONLY) -> list[SearchHit]:
        if not sections or not visible:
            return []
        wanted = set(sections)
        docs = ", ".join(sorted({_quote(d) for d, _, _ in sections}))  # IN on the indexed column, then exact keys
        rows = (self._table.search().where(f"tenant = {_quote(tenant)} AND level = {_quote(Level.CHUNK.value)} "
                                           f"AND document_id IN ({docs}) AND {_readable(visible)}")
                .limit(1_000_000).to_list())
        return _first_chunks([h for h in (_hit(r, 0.0) for r in rows) if h.section_key in wanted], per_section)

    def chunk_versions(self, tenant: str, document_id: str) -> list[tuple[str, int]]:
        rows = (self._table.search().where(f"tenant = {_quote(tenant)} AND document_id = {_quote(document_id)} "
                                           f"AND level = {_quote(Level.CHUNK.value)}")
                .select(["chunk_id", "version", "idx"]).limit(1_000_000).to_list())
        return [(r["chunk_id"], int(r["version"])) for r in sorted(rows, key=lambda r: (r["version"], r["idx"]))]

    def count(self, tenant: str | None = None) -> int:
        where = f"level = {_quote(Level.CHUNK.value)}"
        return int(self._table.count_rows(where if tenant is None else f"tenant = {_quote(tenant)} AND {where}"))

    def maintain(self, force: bool = False) -> None:
        """When it is due (infra/stores/lance_maintenance.py): fold new rows into the full-text and vector
        indexes, compact small fragments, drop old versions, build the ANN index once the table is large."""
        self._maintenance.run(self._table, force)

    def drop(self) -> None:
        """Deletes this generation's table (the other generations' stay) and closes this adapter: constructing
        the generation's index again creates an empty table. A process still holding the table (another
        stage's index) fails on its next read or write: drop only a generation no stage reads any more."""
        with self._lock:
            self._searches.close()
            try:
                self._db.drop_table(self.name)
            except ValueError:  # not found: dropped already (by another process)
                if self.name in self._db.list_tables(limit=1000).tables:
                    raise
        log.info("vector index dropped", table=self.name, generation=self.generation, path=str(self._path))

    def close(self) -> None:
        """Closes the search side's table handle and stops its loop (safe to call again, and after `drop`)."""
        self._searches.close()


def _readable(visible: tuple[str, ...]) -> str:
    """The permission prefilter: entries holding one of the asker's visibility tokens (LABEL_LIST-indexed)."""
    return f"array_has_any(acl, [{', '.join(_quote(t) for t in visible)}])"


def _first_chunks(hits: list[SearchHit], per_section: int) -> list[SearchHit]:
    out: dict[tuple[str, int, int], list[SearchHit]] = {}
    for h in sorted(hits, key=lambda h: (h.section_key, h.index)):
        if len(out.setdefault(h.section_key, [])) < per_section:
            out[h.section_key].append(h)
    return [h for group in out.values() for h in group]


def _hit(r: dict[str, Any], score: float) -> SearchHit:
    return SearchHit(r["chunk_id"], r["document_id"], int(r["version"]), int(r["idx"]), r["text"], score,
                     r["title"], _path(r["section_path"]), _metadata(r["metadata"]), int(r["section"]),
                     Level(r["level"]))


def _hits(table: Any, score_column: str, score: Callable[[float], float] = float) -> list[SearchHit]:
    """Search results (an Arrow table, or None when that retriever was not asked) as hits, column by column."""
    if table is None:
        return []
    cols = {name: table[name].to_pylist() for name in RETURNED}
    scores = table[score_column].to_pylist()
    return [SearchHit(cols["chunk_id"][i], cols["document_id"][i], int(cols["version"][i]), int(cols["idx"][i]),
                      cols["text"][i], score(float(scores[i])), cols["title"][i], _path(cols["section_path"][i]),
                      _metadata(cols["metadata"][i]), int(cols["section"][i]), Level(cols["level"][i]))
            for i in range(table.num_rows)]


@lru_cache(maxsize=4096)
def _path(raw: str) -> tuple[str, ...]:  # section paths and metadata repeat across a document's entries
    return tuple(json.loads(raw))


@lru_cache(maxsize=4096)
def _metadata(raw: str) -> Metadata:
    return MappingProxyType(json.loads(raw))  # read-only: one cached mapping is shared by many hits
