"""When the LanceDB index (infra/stores/lance.py) is maintained, and the run: fold new rows into the full-text
and vector indexes, compact small fragments, drop versions older than KEEP_VERSIONS, build the ANN index once the
table is large; nothing when nothing is due.

Due means: FOLD_ROWS rows outside the full-text indexes, or one waiting FOLD_AFTER_S, or COMPACT_FRAGMENTS small
fragments, and no more often than MAX_SHARE of the time allows; or, resting or not, FOLD_ROWS_MAX rows outside
them. Folding whenever any row was new (as the index did before) kept a core busy under a steady stream of
documents, the embedder's core: new rows are searchable at once anyway (LanceDB scans what its indexes do not
cover), so the policy only bounds what that scan costs a search. `force` folds everything now.

Folding new rows into the ANN index adds a delta index each time (LanceDB's `optimize` merges deltas only when an
IVF partition splits, and its Python API does not expose Lance's `num_indices_to_merge`), and every search reads
every delta: at 20,000 documents ingested through the bus the index had 21 parts, and a query's search cost 32.9 ms
instead of 19.7 ms with one part (46 against 29 ms of CPU; bench/RESULTS.md, issue 26). So once the vector index has
more than MAX_VECTOR_PARTS parts, maintenance rebuilds it as one (12 s of CPU at 41,000 rows, 6.5 s on two cores),
under the same MAX_SHARE rest as the rest of the upkeep (past MAX_VECTOR_PARTS_RESTING, during the rest too);
searches keep reading the old index until the new one commits. The rebuild also re-sizes the IVF partitions for
the table as it now is, not as it was at ANN_MIN_ROWS.

Runs off the write path (the indexer's maintenance thread), concurrently with writes and searches: it takes no
lock a write takes. LanceDB commits optimistically: a compaction that conflicts with a concurrent delete or
update loses and leaves the table as it was (the next run tries again), so maintenance never fails a write.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from lancedb.index import Bitmap, IvfHnswSq

from infra.ops import logs
from kernel.errors import RetryableError

from . import disk

log = logs.get(__name__)
#: Below this many rows exact search is fast and perfectly accurate; above it, build an ANN index.
ANN_MIN_ROWS = 20_000
#: Versions older than this are deleted by maintenance; readers in other processes hold a version for
#: at most one query, so this only has to outlast the slowest query.
KEEP_VERSIONS = timedelta(minutes=10)
#: Maintenance folds new rows into the full-text indexes once this many are outside them: until then every
#: keyword search scans them (measured at 24,000 rows: +7 ms for 200 unindexed rows, +37 ms for 1,000) ...
FOLD_ROWS = 256
#: ... or once the first of them has waited this long, however few they are ...
FOLD_AFTER_S = 30.0
#: ... and at this many even while resting (MAX_SHARE): during a bulk ingest this bounds what the scan adds
#: to a search (~+37 ms) at the price of more upkeep while the documents pour in.
FOLD_ROWS_MAX = 1024
#: The vector index is rebuilt as one once it has more parts than this (the index and its deltas): each part costs
#: every search ~0.6 ms (measured at 41,000 rows), a rebuild ~0.3 ms of CPU per row.
MAX_VECTOR_PARTS = 4
#: ... and at this many even while resting (MAX_SHARE): a bulk ingest folds rows during the rest (FOLD_ROWS_MAX),
#: so without this bound its deltas piled up to 21 over 20,000 documents (and would to ~200 over 200,000) before
#: the first rest ended.
MAX_VECTOR_PARTS_RESTING = 16
#: Small fragments (each write adds one) are compacted once this many have piled up.
COMPACT_FRAGMENTS = 64
#: Maintenance takes at most this share of the time: after a run of d seconds the next waits >= d * (1/share - 1).
#: One run at 24,000 rows costs ~0.4 s of CPU that the embedder and the searches share (bench/RESULTS.md).
MAX_SHARE = 0.1


class Maintenance:
    """The maintenance of one index's table (one generation's): when it is due, and the run."""

    def __init__(self, path: Path, table: str = "chunks") -> None:
        self._path = path
        self._table_name = table  # for what it reports; the run works on the table it is given
        self._lock = threading.Lock()  # one maintenance at a time; never held by writes or searches
        #: Monotonic time before which maintenance does not run again (MAX_SHARE).
        self.rest_until = 0.0
        self._waiting_since: float | None = None  # when rows outside the full-text indexes were first seen

    def run(self, table: Any, force: bool = False) -> None:
        with self._lock:
            before = table.version
            try:
                if "tenant" not in indexed_columns(table):
                    # every search prefilters on tenant: without an index that filter scans the whole column
                    table.create_index("tenant", config=Bitmap(), replace=False)
                if table.count_rows() >= ANN_MIN_ROWS and "vector" not in indexed_columns(table):
                    # (LanceDB names the type "IvfHnswSq", not "IVF_...": look for an index on the column)
                    table.create_index("vector", config=IvfHnswSq(distance_type="cosine"))
                started = time.monotonic()
                ran = False
                if force or self._due(table):
                    table.optimize(cleanup_older_than=KEEP_VERSIONS)
                    self._waiting_since = None
                    ran = True
                parts = vector_parts(table)
                if parts > MAX_VECTOR_PARTS_RESTING or (
                        parts > MAX_VECTOR_PARTS and (force or time.monotonic() >= self.rest_until)):
                    table.create_index("vector", config=IvfHnswSq(distance_type="cosine"), replace=True)
                    log.info("vector index rebuilt as one", table=self._table_name, parts=parts,
                             rows=table.count_rows(), seconds=round(time.monotonic() - started, 2))
                    ran = True
                if ran:
                    self.rest_until = time.monotonic() + (time.monotonic() - started) * (1 / MAX_SHARE - 1)
            except RuntimeError as exc:
                why = disk.trouble(self._path)
                if why is not None:
                    raise RetryableError(f"index maintenance of {self._table_name!r} at {self._path} cannot write: "
                                         f"{why}") from exc
                table.checkout_latest()
                if table.version == before:
                    raise
                # Lance commits optimistically: a compaction that a concurrent write (of this process or
                # another) committed before loses, and leaves the table as it was; the next run compacts.
                log.info("index maintenance lost a commit race to a write; the next run retries",
                         table=self._table_name, versions=f"{before}..{table.version}", error=str(exc)[:200])

    def _due(self, table: Any) -> bool:
        """Enough rows outside a full-text index (searched by a scan), or one waiting long enough, or enough
        small fragments to merge, and the last run's rest is over; or too many rows outside, rest or not."""
        now = time.monotonic()
        stats = [table.index_stats(name) for name in ("text_idx", "heading_idx")]
        unindexed = max((s.num_unindexed_rows for s in stats if s is not None), default=0)
        if unindexed >= FOLD_ROWS_MAX:
            return True
        if now < self.rest_until:
            return False
        if unindexed == 0:
            self._waiting_since = None
        elif self._waiting_since is None:
            self._waiting_since = now
        if unindexed >= FOLD_ROWS or (self._waiting_since is not None and now - self._waiting_since >= FOLD_AFTER_S):
            return True
        return int(table.stats()["fragment_stats"]["num_small_fragments"]) >= COMPACT_FRAGMENTS


def vector_parts(table: Any) -> int:
    """How many parts (the index and its deltas) a vector search reads; 0 without an ANN index."""
    name = next((i.name for i in table.list_indices() if "vector" in i.columns), None)
    stats = table.index_stats(name) if name else None
    return 0 if stats is None else int(stats.num_indices)


def indexed_columns(table: Any) -> set[str]:
    return {c for i in table.list_indices() for c in i.columns}
