"""Embedded vector index on LanceDB: on disk in the data directory, survives restarts.

Vector search (cosine; exact until the table is large enough for an IVF-HNSW index), BM25 through
Lance's native full-text index over title + section path + text, metadata filters as SQL prefilters,
and relative-score fusion on the client. Tenant isolation: every query is prefiltered on `tenant`,
which the port makes a required argument; there is no search path without it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import FTS, Bitmap, BTree, IvfHnswSq
from lancedb.query import MatchQuery

from kernel.errors import ConfigurationError
from kernel.ports import ChunkRecord, Metadata, SearchHit, Vector, WriteFailure
from retrieval.fusion import relative_score_fusion

TABLE = "chunks"
#: Below this many rows exact search is fast and perfectly accurate; above it, build an ANN index.
ANN_MIN_ROWS = 20_000
READ_CONSISTENCY = timedelta(seconds=0.1)
#: Versions older than this are deleted by maintenance; readers in other processes hold a version for
#: at most one query, so this only has to outlast the slowest query.
KEEP_VERSIONS = timedelta(minutes=10)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _meta_terms(metadata: Metadata) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in sorted(metadata.items())]


class LanceVectorIndex:
    def __init__(self, path: Path, dim: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        # A reader in another process (the answerer) looks for a newer table version at most every
        # READ_CONSISTENCY: checking on every search cost ~3 ms per search (two per query), and a write is
        # then searchable at most 0.1 s later. A new connection always starts at the latest version.
        self._db = lancedb.connect(str(path), read_consistency_interval=READ_CONSISTENCY)
        self._dim = dim
        self._lock = threading.Lock()  # writes of this process, one at a time (merge_insert ids must not race)
        self._maintaining = threading.Lock()  # one maintenance at a time; never held by writes or searches
        self._schema = pa.schema([
            pa.field("chunk_id", pa.string()), pa.field("tenant", pa.string()),
            pa.field("document_id", pa.string()), pa.field("version", pa.int64()),
            pa.field("idx", pa.int32()), pa.field("text", pa.string()), pa.field("title", pa.string()),
            pa.field("section_path", pa.string()), pa.field("source", pa.string()),
            pa.field("meta", pa.list_(pa.string())), pa.field("metadata", pa.string()),
            pa.field("search_text", pa.string()), pa.field("vector", pa.list_(pa.float32(), dim)),
        ])
        self._table = self._open_or_create(path)
        have = self._table.schema.field("vector").type.list_size
        if have != dim:
            raise ConfigurationError(
                f"the vector index at {path} holds {have}-dim vectors but the embedder makes {dim}: "
                "use a new RAGBUS_DATA_DIR or the model that built it")

    def _open_or_create(self, path: Path) -> Any:
        """Open the table, creating it with its indexes once; several processes may race to create it."""
        for attempt in range(20):
            try:
                if TABLE in self._db.list_tables(limit=1000).tables:
                    table = self._db.open_table(TABLE)
                    if {i.name for i in table.list_indices()} >= {"search_text_idx", "document_id_idx"}:
                        return table
                    if attempt == 0:  # another process may be building them right now
                        time.sleep(0.5)
                        continue
                else:
                    table = self._db.create_table(TABLE, schema=self._schema, exist_ok=True)
                table.create_index("search_text", config=FTS(), replace=True)
                table.create_index("document_id", config=BTree(), replace=True)
                return table
            except (RuntimeError, OSError, ValueError) as exc:
                if "conflict" not in str(exc).lower() and "exists" not in str(exc).lower():
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise ConfigurationError(f"could not open or create the vector index at {path}")

    def upsert(self, chunks: Sequence[ChunkRecord]) -> list[WriteFailure]:
        if not chunks:
            return []
        rows, failures = [], []
        # one row per id (the last wins): a batch may carry the same event twice, and merge_insert
        # refuses a source with duplicate keys
        for c in {c.chunk_id: c for c in chunks}.values():
            if c.vector.shape != (self._dim,):
                failures.append(WriteFailure(c.chunk_id, f"vector has shape {c.vector.shape}, expected ({self._dim},)"))
                continue
            rows.append({
                "chunk_id": c.chunk_id, "tenant": c.tenant, "document_id": c.document_id, "version": c.version,
                "idx": c.index, "text": c.text, "title": c.title, "section_path": json.dumps(list(c.section_path)),
                "source": c.source, "meta": _meta_terms(c.metadata), "metadata": json.dumps(dict(c.metadata)),
                "search_text": "\n".join([c.title, " ".join(c.section_path), c.text]),
                "vector": np.asarray(c.vector, dtype=np.float32),
            })
        if rows:
            with self._lock:
                (self._table.merge_insert("chunk_id").when_matched_update_all()
                 .when_not_matched_insert_all().execute(pa.Table.from_pylist(rows, schema=self._schema)))
        return failures

    def delete_versions(self, tenant: str, document_id: str, *, below: int) -> None:
        with self._lock:
            self._table.delete(f"tenant = {_quote(tenant)} AND document_id = {_quote(document_id)} "
                               f"AND version < {int(below)}")

    def _where(self, tenant: str, filters: Metadata | None) -> str:
        clauses = [f"tenant = {_quote(tenant)}"]
        for key, value in sorted((filters or {}).items()):
            if key == "document_id":
                clauses.append(f"document_id = {_quote(str(value))}")
            elif key == "source":
                clauses.append(f"source = {_quote(str(value))}")
            else:
                clauses.append(f"array_has(meta, {_quote(_meta_terms({key: value})[0])})")
        return " AND ".join(clauses)

    def hybrid_search(self, tenant: str, text: str, vector: Vector, *, limit: int, alpha: float,
                      candidates: int, filters: Metadata | None = None) -> list[SearchHit]:
        where = self._where(tenant, filters)
        candidates = max(candidates, limit)
        vec_rows: list[dict[str, Any]] = []
        kw_rows: list[dict[str, Any]] = []
        if alpha > 0:
            vec_rows = (self._table.search(np.asarray(vector, dtype=np.float32), vector_column_name="vector")
                        .distance_type("cosine").where(where, prefilter=True).limit(candidates).to_list())
        if alpha < 1:
            query = MatchQuery(text, "search_text")  # type: ignore[call-arg]  # the other fields have defaults
            kw_rows = (self._table.search(query, query_type="fts")
                       .where(where, prefilter=True).limit(candidates).to_list())
        fused = relative_score_fusion(
            [(r["chunk_id"], 1.0 - float(r["_distance"]), r) for r in vec_rows],
            [(r["chunk_id"], float(r["_score"]), r) for r in kw_rows], alpha, limit)
        return [SearchHit(r["chunk_id"], r["document_id"], int(r["version"]), int(r["idx"]), r["text"], score,
                          r["title"], tuple(json.loads(r["section_path"])), json.loads(r["metadata"]))
                for r, score in fused]

    def chunk_versions(self, tenant: str, document_id: str) -> list[tuple[str, int]]:
        rows = (self._table.search().where(f"tenant = {_quote(tenant)} AND document_id = {_quote(document_id)}")
                .select(["chunk_id", "version", "idx"]).limit(1_000_000).to_list())
        return [(r["chunk_id"], int(r["version"])) for r in sorted(rows, key=lambda r: (r["version"], r["idx"]))]

    def count(self, tenant: str | None = None) -> int:
        return int(self._table.count_rows(None if tenant is None else f"tenant = {_quote(tenant)}"))

    def maintain(self) -> None:
        """Fold new rows into the full-text and vector indexes, compact small fragments, drop versions older
        than KEEP_VERSIONS, and build the ANN index once the table is large; nothing when nothing is due.

        Runs off the write path (the indexer's maintenance thread), concurrently with writes and searches:
        it takes no lock a write takes. LanceDB commits optimistically: a compaction that conflicts with a
        concurrent delete or update loses and leaves the table as it was (the next run tries again), so
        maintenance never fails a write.
        """
        with self._maintaining:
            table = self._table
            try:
                if "tenant" not in self._indexed_columns():
                    # every search prefilters on tenant: without an index that filter scans the whole column
                    table.create_index("tenant", config=Bitmap(), replace=False)
                if table.count_rows() >= ANN_MIN_ROWS and not self._has_ann():
                    table.create_index("vector", config=IvfHnswSq(distance_type="cosine"))
                if self._due():
                    table.optimize(cleanup_older_than=KEEP_VERSIONS)
            except RuntimeError as exc:
                # A compaction preempted by a concurrent write is expected and harmless: the write won,
                # the table is as before, the next run compacts. The binding raises a plain RuntimeError;
                # Lance marks this case "Retryable commit conflict" (lance io/commit/conflict_resolver.rs).
                if "Retryable commit conflict" not in str(exc):
                    raise

    def _indexed_columns(self) -> set[str]:
        return {c for i in self._table.list_indices() for c in i.columns}

    def _has_ann(self) -> bool:
        # LanceDB names the type "IvfHnswSq" (not "IVF_..."): look for an index on the vector column
        return "vector" in self._indexed_columns()

    def _due(self) -> bool:
        """Rows outside the full-text index (searched by a scan) or small fragments to merge."""
        stats = self._table.index_stats("search_text_idx")
        if stats is not None and stats.num_unindexed_rows > 0:
            return True
        return int(self._table.stats()["fragment_stats"]["num_small_fragments"]) > 1

    def close(self) -> None:
        """LanceDB holds no open handles that need closing."""
