"""LanceDB maintenance runs beside writes and searches (the indexer's upkeep thread): nothing it does may
lose a write, fail one, or change what a search finds."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from infra.stores import lance_maintenance as maintenance
from infra.stores.lance import LanceVectorIndex
from kernel.ports import ChunkRecord, SearchRequest

DIM = 16


def record(doc: int, version: int, idx: int, rng: np.random.Generator) -> ChunkRecord:
    vector = rng.normal(size=DIM).astype(np.float32)
    vector /= np.linalg.norm(vector)
    return ChunkRecord(f"d{doc}-v{version}-{idx}", "default", f"doc-{doc}", version, idx,
                       f"document {doc} version {version} chunk {idx} about partitions", vector)


def test_maintenance_beside_writes_and_deletes_loses_nothing(tmp_path: Path) -> None:
    index = LanceVectorIndex(tmp_path, DIM)
    rng = np.random.default_rng(7)
    stop, errors = threading.Event(), []
    runs = [0]

    def maintain() -> None:
        while not stop.is_set():
            try:
                index.maintain()
                runs[0] += 1
            except Exception as exc:  # pragma: no cover - what the test is looking for
                errors.append(exc)

    worker = threading.Thread(target=maintain)
    worker.start()
    try:
        for doc in range(40):
            index.upsert([record(doc, 1, i, rng) for i in range(5)])
            if doc % 4 == 0:  # a new version replaces the old one: upsert, then delete below it
                index.upsert([record(doc, 2, i, rng) for i in range(3)])
                index.delete_versions("default", f"doc-{doc}", below=2)
    finally:
        stop.set()
        worker.join()
    assert not errors, errors
    assert runs[0] > 0
    index.maintain(force=True)
    assert index.count() == 30 * 5 + 10 * 3
    for doc in range(40):
        expected = 3 if doc % 4 == 0 else 5
        assert len(index.chunk_versions("default", f"doc-{doc}")) == expected, doc
    assert "tenant" in maintenance.indexed_columns(index._table)  # the tenant prefilter of every search is indexed
    # every row is in both full-text indexes now: nothing is left to scan
    for name in ("text_idx", "heading_idx"):
        stats = index._table.index_stats(name)
        assert stats is not None and stats.num_unindexed_rows == 0, name


def test_the_ann_index_is_built_once_the_table_is_large(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(maintenance, "ANN_MIN_ROWS", 600)
    index = LanceVectorIndex(tmp_path, DIM)
    rng = np.random.default_rng(3)
    index.upsert([record(d, 1, i, rng) for d in range(50) for i in range(10)])
    index.maintain()
    assert "vector" not in maintenance.indexed_columns(index._table)
    more = [record(d, 1, i, rng) for d in range(50, 70) for i in range(10)]
    index.upsert(more)
    index.maintain()
    assert "vector" in maintenance.indexed_columns(index._table)
    # a stored row's own vector finds that row first, through the ANN index
    found = index.search("default", SearchRequest("unrelated words", more[42].vector, candidates=20, keyword=False))
    assert found.dense[0].chunk_id == more[42].chunk_id


def unindexed(index: LanceVectorIndex) -> int:
    stats = index._table.index_stats("text_idx")
    return 0 if stats is None else int(stats.num_unindexed_rows)


def test_maintenance_waits_until_folding_is_worth_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A few new rows stay outside the full-text index (searched by a scan, still found) until FOLD_ROWS of
    them pile up; then one run folds them all."""
    monkeypatch.setattr(maintenance, "FOLD_ROWS", 40)
    index = LanceVectorIndex(tmp_path, DIM)
    rng = np.random.default_rng(5)
    index.upsert([record(d, 1, i, rng) for d in range(6) for i in range(5)])  # 30 rows, 6 fragments
    index.maintain()
    assert unindexed(index) == 30
    found = index.search("default", SearchRequest("partitions", rng.normal(size=DIM).astype(np.float32),
                                                  candidates=50, dense=False))
    assert len(found.keyword) == 30  # unindexed rows are searched all the same
    index.upsert([record(6, 1, i, rng) for i in range(10)])  # 40: due
    index.maintain()
    assert unindexed(index) == 0


def test_a_row_waiting_long_enough_is_folded_however_few(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(maintenance.time, "monotonic", lambda: clock[0])
    index = LanceVectorIndex(tmp_path, DIM)
    rng = np.random.default_rng(6)
    index.upsert([record(0, 1, i, rng) for i in range(3)])
    index.maintain()  # first seen waiting now
    clock[0] += maintenance.FOLD_AFTER_S - 1
    index.maintain()
    assert unindexed(index) == 3
    clock[0] += 2
    index.maintain()
    assert unindexed(index) == 0


def test_maintenance_rests_in_proportion_to_its_own_cost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a run of d seconds nothing runs for d * (1/MAX_SHARE - 1), however much is due."""
    clock = [1000.0]

    def monotonic() -> float:  # every reading advances the clock: a run "takes" the readings inside it
        clock[0] += 0.5
        return clock[0]

    monkeypatch.setattr(maintenance.time, "monotonic", monotonic)
    monkeypatch.setattr(maintenance, "FOLD_ROWS", 1)
    index = LanceVectorIndex(tmp_path, DIM)
    rng = np.random.default_rng(8)
    index.upsert([record(0, 1, i, rng) for i in range(3)])
    index.maintain()
    assert unindexed(index) == 0
    rest = index._maintenance.rest_until - clock[0]
    assert rest > 0
    index.upsert([record(1, 1, i, rng) for i in range(3)])
    index.maintain()
    assert unindexed(index) == 3  # due, but resting
    clock[0] += rest
    index.maintain()
    assert unindexed(index) == 0


def test_too_many_unindexed_rows_are_folded_even_while_resting(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A bulk ingest must not leave every keyword search scanning thousands of rows until the rest is over."""
    monkeypatch.setattr(maintenance, "FOLD_ROWS", 1)
    monkeypatch.setattr(maintenance, "FOLD_ROWS_MAX", 20)
    index = LanceVectorIndex(tmp_path, DIM)
    rng = np.random.default_rng(9)
    index.upsert([record(0, 1, i, rng) for i in range(3)])
    index.maintain()
    index._maintenance.rest_until = float("inf")
    index.upsert([record(1, 1, i, rng) for i in range(10)])
    index.maintain()
    assert unindexed(index) == 10  # resting
    index.upsert([record(2, 1, i, rng) for i in range(10)])
    index.maintain()
    assert unindexed(index) == 0


def with_ann_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator) -> LanceVectorIndex:
    """An index of 700 rows whose ANN index (built past ANN_MIN_ROWS, lowered to 600) is one part."""
    monkeypatch.setattr(maintenance, "ANN_MIN_ROWS", 600)
    index = LanceVectorIndex(tmp_path, DIM)
    index.upsert([record(d, 1, i, rng) for d in range(70) for i in range(10)])
    index.maintain(force=True)
    return index


def test_the_vector_index_is_rebuilt_as_one_when_its_deltas_pile_up(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Each fold of new rows adds a delta to the ANN index, and every search reads every delta: past
    MAX_VECTOR_PARTS parts maintenance rebuilds it as one, and the rows stay found."""
    monkeypatch.setattr(maintenance, "MAX_VECTOR_PARTS", 2)
    rng = np.random.default_rng(5)
    index = with_ann_index(tmp_path, monkeypatch, rng)
    assert maintenance.vector_parts(index._table) == 1
    seen = []
    for batch in range(5):
        more = [record(1000 + batch * 10 + d, 1, i, rng) for d in range(10) for i in range(5)]
        index.upsert(more)
        index.maintain(force=True)
        seen.append(maintenance.vector_parts(index._table))
        found = index.search("default", SearchRequest("unrelated words", more[7].vector, candidates=20, keyword=False))
        assert found.dense[0].chunk_id == more[7].chunk_id
    assert max(seen) <= 2, seen
    assert 2 in seen, f"no fold added a delta, so nothing was rebuilt: {seen}"


def test_a_bulk_ingest_resting_between_runs_still_bounds_the_deltas(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """During a bulk ingest maintenance rests (MAX_SHARE) and only folds because too many rows are outside the
    indexes; past MAX_VECTOR_PARTS_RESTING parts it rebuilds the vector index all the same."""
    monkeypatch.setattr(maintenance, "MAX_VECTOR_PARTS", 1)
    monkeypatch.setattr(maintenance, "MAX_VECTOR_PARTS_RESTING", 3)
    monkeypatch.setattr(maintenance, "FOLD_ROWS_MAX", 20)
    rng = np.random.default_rng(6)
    index = with_ann_index(tmp_path, monkeypatch, rng)
    seen = []
    for batch in range(6):
        index._maintenance.rest_until = time.monotonic() + 3600  # resting the whole time
        index.upsert([record(2000 + batch * 10 + d, 1, i, rng) for d in range(10) for i in range(5)])
        index.maintain()
        seen.append(maintenance.vector_parts(index._table))
    assert max(seen) <= 3, seen
    assert 3 in seen, f"the folds added no delta: {seen}"


def test_a_cleanup_with_nothing_to_remove_commits_no_table_version(tmp_path: Path) -> None:
    """The indexer cleans up below every finished version; for a new document nothing is there, and LanceDB would
    commit a version (and spend ~10 ms) for a delete that matches nothing. One with something to remove does."""
    index = LanceVectorIndex(tmp_path, DIM)
    rng = np.random.default_rng(7)
    index.upsert([record(1, 1, i, rng) for i in range(3)] + [record(1, 2, i, rng) for i in range(2)])
    before = index._table.version
    for _ in range(5):
        index.delete_versions("default", "doc-1", below=1)
        index.delete_versions("default", "d-unknown", below=9)
    assert index._table.version == before
    index.delete_versions("default", "doc-1", below=2)
    assert index._table.version == before + 1
    assert sorted(v for _, v in index.chunk_versions("default", "doc-1")) == [2, 2]
