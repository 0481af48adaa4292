"""Shared by the latency, freshness and scale benchmarks: real documents, and a stack's stores filled with
N chunks of them without going through the bus (the benchmarks measure queries, not this set-up).

Chunks come from ../shared/data/pydocs-faq-dev: the corpus sections first, then the whole pages, chunked and
embedded exactly as the pipeline does (same Chunker settings, contextual header, configured embedder).
Vectors go through the pipeline's own embedding cache in the data directory, so a second run on the same
directory (`--data-dir`) embeds nothing.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the ONNX export `make install` made, not one per temporary data directory
os.environ.setdefault("RAGBUS_EMBEDDER_ONNX_DIR", str(Path(__file__).resolve().parent.parent / ".ragbus" / "models"))

from chunking.splitter import Chunker, embedding_text
from infra.models.embedder import embedding_dim, load_tokenizer
from infra.ops.metrics import Metrics
from infra.settings import Settings
from kernel.ports import ChunkRecord, DocumentRecord, Level
from ragbus import wiring
from schemas.events import ContentType, DocumentArrived, SectionLead, Status, chunk_uuid, section_uuid
from streams.embedder import CachedEmbedder

DATA = Path(__file__).resolve().parent.parent.parent / "shared/data/pydocs-faq-dev"


def documents(data: Path = DATA) -> Iterator[dict[str, Any]]:
    """Corpus sections, then whole pages (ids prefixed `page:`): enough text for ~40k chunks."""
    with (data / "corpus.jsonl").open() as fh:
        for line in fh:
            yield json.loads(line)
    with (data / "pages.jsonl").open() as fh:
        for line in fh:
            doc = json.loads(line)
            yield doc | {"id": f"page:{doc['id']}"}


def fresh_documents() -> Iterator[DocumentArrived]:
    """Corpus sections under new ids and titles: the title is part of every chunk's embedded text, so none
    of them is in the embedding cache the preload filled, and each is really embedded."""
    for i, doc in enumerate(itertools.cycle(documents())):
        yield DocumentArrived(document_id=f"fresh-{i}-{doc['id']}"[:200], title=f"{doc['title']} (rev {i})",
                              text=doc["text"], correlation_id="freshness")


def questions(data: Path = DATA) -> list[str]:
    with (data / "queries.jsonl").open() as fh:
        return [json.loads(line)["text"] for line in fh]


def preload(settings: Settings, chunks: int, tenant: str = "default", batch: int = 512,
            say: Any = print) -> int:
    """Fill the data directory's stores with `chunks` chunks (fewer only if the data runs out), and the index
    with their section entries as the indexer writes them (the lead text, with the vector of the section's
    first chunk); returns how many chunks the index holds. Idempotent: rows already there are rewritten,
    cached vectors are reused."""
    index = wiring.build_index(settings, embedding_dim(settings.embedder.model))
    if index.count(tenant) >= chunks:
        return index.count(tenant)
    store = wiring.build_store(settings)
    embedder = CachedEmbedder(wiring.build_embedder(settings), wiring.build_cache(settings), Metrics())
    chunker = Chunker(load_tokenizer(settings.embedder.model), settings.chunker.size_tokens,
                      settings.chunker.overlap_tokens)
    started, done = time.perf_counter(), 0
    pending: list[tuple[dict[str, Any], Any]] = []
    leads: dict[tuple[str, int], SectionLead] = {}  # (document, section) -> its entry, until written

    def flush() -> None:
        nonlocal done
        vectors = embedder.embed([embedding_text(d["title"], c.section_path, c.text) for d, c in pending])
        records = [ChunkRecord(chunk_uuid(tenant, d["id"], 1, c.index), tenant, d["id"], 1, c.index, c.text, v,
                               d["title"], tuple(c.section_path), "bench", {}, c.section)
                   for (d, c), v in zip(pending, vectors, strict=True)]
        sections = [ChunkRecord(section_uuid(tenant, d["id"], 1, c.section), tenant, d["id"], 1, c.section,
                                lead.text, v, d["title"], tuple(lead.section_path), "bench", {}, c.section,
                                Level.SECTION)
                    for (d, c), v in zip(pending, vectors, strict=True)
                    if (lead := leads.pop((d["id"], c.section), None)) is not None]
        index.upsert(records + sections)
        store.upsert_chunks(records)
        done += len(records)
        pending.clear()
        say(f"  preloaded {done}/{chunks} chunks ({done / (time.perf_counter() - started):.0f}/s, "
            f"{embedder.computed} embedded)")

    finished: list[tuple[str, str, int]] = []
    for doc in documents():
        pieces, doc_leads = chunker.split(ContentType.TEXT, doc["text"])
        if done + len(pending) + len(pieces) > chunks:
            break
        leads |= {(doc["id"], lead.section): lead for lead in doc_leads}
        pending += [(doc, c) for c in pieces]
        finished.append((doc["id"], doc["title"], len(pieces)))
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    for doc_id, title, n in finished:
        store.apply_status(DocumentRecord(tenant, doc_id, 1, Status.INDEXED, n, title=title, source="bench"))
    index.maintain(force=True)  # what the indexer's upkeep thread would have done meanwhile
    return index.count(tenant)


def rss_mb(pid: int) -> tuple[float, float]:
    """(resident now, peak resident) of a process, in MB, from /proc."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return round(values.get("VmRSS", 0.0), 1), round(values.get("VmHWM", 0.0), 1)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def real_rows(settings: Settings, tenant: str = "default") -> tuple[list[str], Any]:
    """Texts and vectors of the real chunks in the data directory's index (for synthetic neighbours)."""
    import numpy as np

    index = wiring.build_index(settings, embedding_dim(settings.embedder.model))
    table = index._table  # type: ignore[attr-defined]  # the benchmark reads LanceDB directly
    rows = table.search().where(f"tenant = '{tenant}'").select(["text", "vector"]).limit(10_000_000).to_arrow()
    vectors = np.stack(rows.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
    return rows.column("text").to_pylist(), vectors


def synthetic_fill(settings: Settings, total: int, tenant: str = "default", seed: int = 13,
                   batch: int = 5000, say: Any = print) -> int:
    """Top the index up to `total` chunks with synthetic ones: each a real chunk's vector plus Gaussian noise
    (cosine ~0.9 to it: a cluster of near neighbours around every real chunk, a hard case for an ANN index)
    and a text of words drawn from real chunks. For the largest sizes, where embedding real text would
    take hours; the real chunks must be preloaded first."""
    import numpy as np

    index = wiring.build_index(settings, embedding_dim(settings.embedder.model))
    have = index.count(tenant)
    if have >= total:
        return have
    texts, vectors = real_rows(settings, tenant)
    words = " ".join(texts).split()
    rng = np.random.default_rng(seed)
    store = wiring.build_store(settings)
    started = time.perf_counter()
    n = have
    while n < total:
        size = min(batch, total - n)
        base = rng.integers(0, len(vectors), size)
        noisy = vectors[base] + rng.normal(scale=0.45 / np.sqrt(vectors.shape[1]), size=(size, vectors.shape[1]))
        noisy = (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)
        records = []
        for i in range(size):
            start = int(rng.integers(0, len(words) - 160))
            doc = f"synthetic-{(n + i) // 8}"
            records.append(ChunkRecord(chunk_uuid(tenant, doc, 1, (n + i) % 8), tenant, doc, 1, (n + i) % 8,
                                       " ".join(words[start:start + 150]), noisy[i], f"Synthetic {doc}", (),
                                       "synthetic"))
        index.upsert(records)
        store.upsert_chunks(records)
        n += size
        say(f"  synthetic fill {n}/{total} ({(n - have) / (time.perf_counter() - started):.0f}/s)")
    index.maintain(force=True)
    return index.count(tenant)
