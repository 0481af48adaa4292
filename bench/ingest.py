"""Ingest throughput through the whole pipeline, next to the raw embedder on the same chunks.

    python bench/ingest.py PATH [--limit N] [--json]

PATH: files, a directory or a JSONL file (`id`, `title`, `text`), e.g.
../shared/data/pydocs-faq-dev/pages.jsonl. The run:

1. starts the stack (`ragbus up`'s processes) on a fresh data directory and local broker, and warms
   it up with one small document, so model loading and group joins are not counted;
2. publishes every document and times until each one is indexed (or failed);
3. stops the stack, chunks the same documents with the same chunker settings and embeds exactly the
   texts the pipeline embedded with the same model in this process, on an otherwise idle machine.

ratio = pipeline chunks/s / raw embedder chunks/s: how busy the pipeline keeps its bottleneck.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the ONNX export `make install` made, not one per temporary data directory
os.environ.setdefault("RAGBUS_EMBEDDER_ONNX_DIR", str(Path(__file__).resolve().parent.parent / ".ragbus" / "models"))

from bench.report import emit, run_facts
from chunking.splitter import Chunker, embedding_text
from engine.clients import EventProducer
from engine.tail import Tail
from infra.models.embedder import embedding_dim, load_tokenizer
from infra.ops import logs
from infra.settings import Settings
from ragbus import wiring
from ragbus.client import documents_from, new_correlation, publish, wait_final
from ragbus.supervisor import PROCESSES, Stack
from schemas.events import DocumentArrived
from schemas.stages import EMBEDDER
from schemas.topics import TOPICS


def layout(embedders: int) -> tuple[tuple[str, ...], ...]:
    """`ragbus up`'s processes, with `embedders` embedder processes sharing chunks.v1's partitions."""
    return tuple(p for stage in PROCESSES for p in ([stage] * embedders if stage == (EMBEDDER.name,) else [stage]))


def run_pipeline(settings: Settings, events: list[DocumentArrived], timeout: float,
                 embedders: int = 1) -> tuple[float, int, int]:
    with Stack(settings, processes=layout(embedders)) as stack:
        child = stack.child_settings()
        warm = DocumentArrived(document_id="__warmup__", text="Warm-up document for the benchmark.",
                               correlation_id="warmup")
        producer = EventProducer(child)
        with Tail(child, TOPICS.status) as tail:
            publish(child, producer, [warm])
            if not wait_final(tail, [warm], 120):
                raise SystemExit("the stack did not index the warm-up document within 120s")
        with Tail(child, TOPICS.status) as tail:
            started = time.perf_counter()
            publish(child, producer, events)
            final = wait_final(tail, events, timeout)
            elapsed = time.perf_counter() - started
    failed = sum(1 for s in final.values() if s.status.value != "indexed")
    if len(final) < len(events):
        raise SystemExit(f"only {len(final)} of {len(events)} documents finished within {timeout}s")
    return elapsed, sum(s.chunks for s in final.values()), failed


def raw_embedder(settings: Settings, events: list[DocumentArrived], store: object) -> tuple[float, int]:
    chunker = Chunker(load_tokenizer(settings.embedder.model), settings.chunker.size_tokens,
                      settings.chunker.overlap_tokens)
    texts = []
    for ev in events:
        content = ev.text if ev.text is not None else store.get_content(ev.content_ref)  # type: ignore[attr-defined]
        texts += [embedding_text(ev.title, c.section_path, c.text) for c in chunker.chunk(ev.content_type, content)]
    embedder = wiring.build_embedder(settings)  # the backend the pipeline used
    embedder.embed(texts[:8])  # warm-up, like the pipeline's
    unique = list(dict.fromkeys(texts))  # the pipeline's cache embeds each distinct text once
    started = time.perf_counter()
    for i in range(0, len(unique), 256):
        embedder.embed(unique[i:i + 256])
    return time.perf_counter() - started, len(unique)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", type=Path)
    ap.add_argument("--limit", type=int, default=0, help="first N documents only")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--json", action="store_true", help="one JSON object")
    ap.add_argument("--seed-dir", type=Path, help="start from a copy of this data directory (an index of N chunks, "
                                                   "e.g. made by bench/latency.py); its cached vectors are dropped")
    ap.add_argument("--embedders", type=int, default=1,
                    help="embedder processes on separate partitions; the cores' threads are split between them")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="ragbus-bench-") as data:
        os.environ["RAGBUS_DATA_DIR"] = data
        if args.seed_dir:
            shutil.copytree(args.seed_dir, data, dirs_exist_ok=True, ignore=shutil.ignore_patterns("logs", "health",
                                                                                                 "broker.json"))
            with sqlite3.connect(Path(data) / "ragbus.sqlite") as db:  # the pages' vectors may be cached there
                db.execute("DELETE FROM embeddings")
        if args.embedders > 1:
            os.environ["RAGBUS_EMBEDDER_THREADS"] = str(max(1, (os.cpu_count() or 2) // args.embedders))
        os.environ.pop("RAGBUS_KAFKA_BOOTSTRAP_SERVERS", None)
        os.environ.setdefault("RAGBUS_LOG_LEVEL", "WARNING")
        settings = Settings()
        logs.configure(settings.log_level, settings.log_format, quiet_clients=True)
        store = wiring.build_store(settings)
        events = list(documents_from(args.paths, settings, store, "default", new_correlation()))
        if args.limit:
            events = events[: args.limit]
        preloaded = wiring.build_index(settings, embedding_dim(settings.embedder.model)).count() if args.seed_dir else 0
        elapsed, chunks, failed = run_pipeline(settings, events, args.timeout, args.embedders)
        embed_s, unique = raw_embedder(settings, events, store)

    result = {
        "embedder": settings.embedder.backend, "embedder_processes": args.embedders,
        "index_chunks_before": preloaded,
        "documents": len(events), "failed": failed, "chunks": chunks, "distinct_chunk_texts": unique,
        "pipeline_s": round(elapsed, 2), "docs_per_s": round(len(events) / elapsed, 3),
        "chunks_per_s": round(chunks / elapsed, 2), "embedder_s": round(embed_s, 2),
        "embedder_chunks_per_s": round(unique / embed_s, 2),
        # The same work (each distinct text embedded once) raw vs through the pipeline: equal to
        # chunks_per_s / embedder_chunks_per_s when no text repeats, and not flattered when some do.
        "ratio": round(embed_s / elapsed, 3),
        **run_facts(),
    }
    emit(result, args.json)


if __name__ == "__main__":
    main()
