"""chunks.v1 -> embedded.v1 + status.v1 (at-least-once; micro-batched across documents).

The model is the pipeline's bottleneck, so the runner hands this stage up to `max_batch_events`
events at a time and all their chunks are embedded in one call. Vectors are cached by content
(model + text hash): the same text arriving again, or an update that keeps most paragraphs, is not
re-embedded.

Index generations (kernel/generations.py): a part is embedded with its generation's model; a batch makes one
model call per model. A part for a generation that is no longer live (cancelled, dropped) is dropped here.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence

import numpy as np

from chunking.splitter import embedding_text
from infra.ops.metrics import Metrics
from kernel.generations import Lanes
from kernel.ports import Embedder, EmbeddingCache, Vectors
from kernel.stage import Out, PerEvent, Stage, failed_status
from schemas.events import (
    ChunksEmbedded,
    ChunksProduced,
    DocumentAclChanged,
    DocumentDeleted,
    DocumentStatus,
    EmbeddedChunk,
    EmbeddedSection,
    Status,
)
from schemas.stages import EMBEDDER
from schemas.topics import TOPICS, document_key


class CachedEmbedder:
    """An Embedder in front of an EmbeddingCache; counts what it really computed."""

    def __init__(self, inner: Embedder, cache: EmbeddingCache, metrics: Metrics | None = None) -> None:
        self._inner = inner
        self._cache = cache
        self._metrics = metrics
        self.name = inner.name
        self.dim = inner.dim
        self.computed = 0

    def _key(self, text: str) -> str:
        return hashlib.sha256(f"{self.name}\x1f{text}".encode()).hexdigest()

    def embed(self, texts: Sequence[str]) -> Vectors:
        keys = [self._key(t) for t in texts]
        found = self._cache.get_many(list(dict.fromkeys(keys)))
        missing = list(dict.fromkeys(k for k in keys if k not in found))
        if missing:
            by_key = dict(zip(keys, texts, strict=True))
            started = time.perf_counter()
            vectors = self._inner.embed([by_key[k] for k in missing])
            if self._metrics:
                self._metrics.embed_seconds.observe(time.perf_counter() - started)
            fresh = {k: np.asarray(v, dtype="<f4").tobytes() for k, v in zip(missing, vectors, strict=True)}
            self._cache.put_many(fresh)
            found.update(fresh)
            self.computed += len(missing)
        if self._metrics:
            self._metrics.embed_cache.labels("hit").inc(len(keys) - len(missing))
            self._metrics.embed_cache.labels("miss").inc(len(missing))
        if not keys:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([np.frombuffer(found[k], dtype="<f4") for k in keys])


Event = ChunksProduced | DocumentDeleted | DocumentAclChanged


def embed_events(events: Sequence[Event], embedders: CachedEmbedder | Callable[[str], CachedEmbedder | None]
                 ) -> list[PerEvent]:
    """Every chunk of the batch embedded, one model call per generation's model. A section entry's vector is its
    first chunk's: title, heading path and the start of the section, which is what the model can read of a
    section anyway; it ranked sections better than embedding the whole section (bench/RESULTS.md) and costs
    nothing more."""
    if isinstance(embedders, CachedEmbedder):
        embedders = Lanes.fixed(embedders).get
    by_model: dict[int, tuple[CachedEmbedder, list[str]]] = {}
    owner: dict[int, CachedEmbedder] = {}
    for i, ev in enumerate(events):
        if isinstance(ev, ChunksProduced) and (model := embedders(ev.generation)) is not None:
            owner[i] = model
            by_model.setdefault(id(model), (model, []))[1].extend(
                embedding_text(ev.title, c.section_path, c.text) for c in ev.chunks)
    vectors = {key: (model, model.embed(texts), iter(range(len(texts)))) for key, (model, texts) in by_model.items()}
    results: list[PerEvent] = []
    for i, ev in enumerate(events):
        key = document_key(ev.tenant, ev.document_id)
        if isinstance(ev, DocumentDeleted | DocumentAclChanged):  # pass through, in order with the document
            results.append([Out(TOPICS.embedded, key, ev)])
            continue
        if i not in owner:
            results.append([])  # its generation is no longer live
            continue
        embedder, matrix, rows = vectors[id(owner[i])]
        chunks = [EmbeddedChunk(**c.model_dump(), vector_b64=EmbeddedChunk.encode_vector(matrix[next(rows)]))
                  for c in ev.chunks]
        first: dict[int, str] = {}
        for c in chunks:
            first.setdefault(c.section, c.vector_b64)
        sections = [EmbeddedSection(**s.model_dump(), vector_b64=first[s.section])
                    for s in ev.sections if s.section in first]
        fields = ev.model_dump(exclude={"type", "chunks", "sections", "event_id", "occurred_at"})
        outs = [Out(TOPICS.embedded, key, ChunksEmbedded(**fields, model=embedder.name, dim=embedder.dim,
                                                         chunks=chunks, sections=sections))]
        if ev.part == ev.parts - 1:
            outs.append(Out(TOPICS.status, key, DocumentStatus(
                tenant=ev.tenant, correlation_id=ev.correlation_id, document_id=ev.document_id,
                version=ev.version, status=Status.EMBEDDED, stage=EMBEDDER.name, chunks=ev.total_chunks)))
        results.append(outs)
    return results


def stage(lanes: Lanes[CachedEmbedder] | CachedEmbedder, max_batch: int, window_s: float, slice_bytes: int = 0
          ) -> Stage[Event]:
    if isinstance(lanes, CachedEmbedder):
        lanes = Lanes.fixed(lanes)

    def handle(events: Sequence[Event]) -> list[PerEvent]:
        lanes.refresh()
        return embed_events(events, lanes.get)

    return Stage(
        EMBEDDER, handle=handle, slice_bytes=slice_bytes,
        on_failure=lambda ev, exc: failed_status(ev, exc, EMBEDDER.name), max_batch=max_batch, window_s=window_s,
    )
