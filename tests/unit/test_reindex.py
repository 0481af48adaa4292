"""`ragbus reindex` refusals, on a real embedded store: each is one line that says what to do, and none
records or switches anything half-way."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from infra.settings import Settings
from infra.stores.sqlite import SqliteDocumentStore
from kernel.generations import FIRST, State
from kernel.ports import DocumentRecord
from ragbus import reindex, wiring
from schemas.events import Status


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, SqliteDocumentStore]:
    monkeypatch.setenv("RAGBUS_DATA_DIR", str(tmp_path))
    settings = Settings()
    store = SqliteDocumentStore(tmp_path / "ragbus.sqlite")
    store.ensure_first(wiring.build_of(settings))
    return settings, store


def states(store: SqliteDocumentStore) -> dict[str, State]:
    return {g.name: g.state for g in store.generations()}


def test_a_build_like_the_serving_one_is_refused(setup: tuple[Settings, SqliteDocumentStore]) -> None:
    settings, store = setup
    with pytest.raises(reindex.ReindexError, match="serves with exactly these settings already"):
        reindex.start(settings, store, wiring.build_of(settings))
    assert states(store) == {FIRST: State.SERVING}


def test_a_model_that_cannot_be_loaded_is_refused_before_anything_is_recorded(
        setup: tuple[Settings, SqliteDocumentStore]) -> None:
    settings, store = setup
    build = dataclasses.replace(wiring.build_of(settings), model="/nowhere/no-such-model")
    with pytest.raises(reindex.ReindexError, match="cannot be loaded") as caught:
        reindex.start(settings, store, build)
    assert "\n" not in str(caught.value)
    assert states(store) == {FIRST: State.SERVING}


def test_a_chunk_size_the_model_cannot_read_is_refused(setup: tuple[Settings, SqliteDocumentStore]) -> None:
    settings, store = setup
    build = dataclasses.replace(wiring.build_of(settings), chunk_size=500)
    with pytest.raises(Exception, match="lower the chunk size"):
        reindex.start(settings, store, build)
    assert states(store) == {FIRST: State.SERVING}


def test_a_second_start_while_one_builds_is_refused(setup: tuple[Settings, SqliteDocumentStore]) -> None:
    settings, store = setup
    store.start_generation(dataclasses.replace(wiring.build_of(settings), chunk_size=100), 0)
    with pytest.raises(reindex.ReindexError, match="reindex switch|reindex cancel"):
        reindex.start(settings, store, dataclasses.replace(wiring.build_of(settings), chunk_size=120))
    assert states(store) == {FIRST: State.SERVING, "g2": State.BUILDING}


def test_a_switch_before_catch_up_is_refused_saying_how_far(setup: tuple[Settings, SqliteDocumentStore]) -> None:
    settings, store = setup
    for doc in ("a", "b", "c"):
        store.apply_status(DocumentRecord("default", doc, 1, Status.INDEXED, 1, "", "0" * 64))
        store.mark_indexed(FIRST, "default", doc, 1)
    store.start_generation(dataclasses.replace(wiring.build_of(settings), chunk_size=100), 3)
    store.mark_indexed("g2", "default", "a", 1)
    with pytest.raises(reindex.ReindexError, match="g2 has 1 of 3 documents") as caught:
        reindex.switch(store, settings)
    assert "reindex resume" in str(caught.value)
    assert states(store) == {FIRST: State.SERVING, "g2": State.BUILDING}
    [row] = [r for r in reindex.report(store, settings) if r["name"] == "g2"]
    assert (row["done"], row["total"], row["caught_up"]) == (1, 3, False)

    for doc in ("b", "c"):
        store.mark_indexed("g2", "default", doc, 1)
    assert reindex.switch(store, settings).name == "g2"
    assert states(store) == {FIRST: State.OLD, "g2": State.SERVING}


def test_nothing_to_switch_roll_back_cancel_or_drop(setup: tuple[Settings, SqliteDocumentStore]) -> None:
    settings, store = setup
    with pytest.raises(reindex.ReindexError, match="no generation is building"):
        reindex.switch(store, settings)
    with pytest.raises(reindex.ReindexError, match="no old generation is kept"):
        reindex.rollback(store, settings)
    with pytest.raises(reindex.ReindexError, match="nothing to cancel"):
        reindex.drop(store, settings, State.BUILDING)
    with pytest.raises(reindex.ReindexError, match="nothing to drop"):
        reindex.drop(store, settings, State.OLD)
    with pytest.raises(reindex.ReindexError, match="no generation is building"):
        reindex.resume(settings, store)
    assert states(store) == {FIRST: State.SERVING}


def test_cancel_drops_the_building_generation_and_its_index(setup: tuple[Settings, SqliteDocumentStore]) -> None:
    settings, store = setup
    build = dataclasses.replace(wiring.build_of(settings), chunk_size=100)
    store.start_generation(build, 0)
    index = wiring.build_index(wiring.for_generation(settings, build), 384, "g2", build)
    assert index.count() == 0
    index.close()
    assert reindex.drop(store, settings, State.BUILDING).name == "g2"
    assert states(store) == {FIRST: State.SERVING}
    assert not (settings.data_dir / "lance" / "chunks_g2.lance").exists()


def test_start_up_with_other_settings_says_what_serves_what_differs_and_the_command(
        setup: tuple[Settings, SqliteDocumentStore], monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import json
    import logging

    from infra.ops import logs

    settings, store = setup
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.configure("INFO", "json", stream=stream)
    try:
        wiring.notice_differences(settings, store.generations(), "embedder")
        assert stream.getvalue() == ""  # the same settings: nothing to say
        monkeypatch.setenv("RAGBUS_CHUNK_SIZE_TOKENS", "300")
        wiring.notice_differences(Settings(), store.generations(), "embedder")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    [line] = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert line["level"] == "warning" and line["serving"] == FIRST
    assert line["differs"] == "chunk_size: 200 -> 300"
    assert "ragbus reindex start" in line["to_adopt"]


def test_a_stage_serves_the_generation_as_it_was_built_whatever_the_settings_say_now(
        setup: tuple[Settings, SqliteDocumentStore], monkeypatch: pytest.MonkeyPatch) -> None:
    from chunking.splitter import Chunker
    from infra.models.embedder import load_tokenizer
    from infra.ops.metrics import Metrics
    from ragbus import registry
    from schemas.events import ChunksProduced, DocumentArrived
    from schemas.stages import CHUNKER

    settings, _ = setup
    monkeypatch.setenv("RAGBUS_CHUNK_SIZE_TOKENS", "400")
    stage = registry.build(CHUNKER.name, registry.Context(Settings(), Metrics(), None, lambda _: None))
    text = " ".join(f"Sentence {i} about partitions, offsets and consumer groups." for i in range(400))
    [outs] = stage.handle([DocumentArrived(document_id="d", text=text)])
    assert not isinstance(outs, Exception)
    parts = [o.event for o in outs if isinstance(o.event, ChunksProduced)]
    served = Chunker(load_tokenizer(settings.embedder.model), settings.chunker.size_tokens,
                     settings.chunker.overlap_tokens)
    assert {p.generation for p in parts} == {FIRST}
    assert parts[0].total_chunks == len(served.chunk(parts[0].content_type, text))  # g1's 200, not 400


def test_the_rebuild_window_waits_for_the_new_generation_and_never_forever(
        setup: tuple[Settings, SqliteDocumentStore]) -> None:
    import threading
    import time

    settings, store = setup
    docs = []
    for doc in ("a", "b", "c", "d"):
        store.apply_status(DocumentRecord("default", doc, 1, Status.INDEXED, 1, "", "0" * 64))
        docs.append(store.get_document("default", doc))
    store.start_generation(dataclasses.replace(wiring.build_of(settings), chunk_size=100), 4)
    window = reindex.Window(store, "g2", 2, stall_s=5.0, poll_s=0.01)
    window.admit(docs[0])  # type: ignore[arg-type]
    window.admit(docs[1])  # type: ignore[arg-type]
    threading.Timer(0.3, lambda: store.mark_indexed("g2", "default", "b", 1)).start()  # b first: any order
    started = time.monotonic()
    window.admit(docs[2])  # type: ignore[arg-type]
    assert 0.25 < time.monotonic() - started < 3
    store.apply_status(DocumentRecord("default", "a", 2, Status.CHUNKED))  # a moved on: its live event carries it
    started = time.monotonic()
    window.admit(docs[3])  # type: ignore[arg-type]
    assert time.monotonic() - started < 1

    stalled = reindex.Window(store, "g2", 1, stall_s=0.2, poll_s=0.01)
    stalled.admit(docs[2])  # type: ignore[arg-type]  # c never gets indexed in g2
    started = time.monotonic()
    stalled.admit(docs[3])  # type: ignore[arg-type]
    assert 0.15 < time.monotonic() - started < 3
