"""A cross-encoder reranker: sentence-transformers `CrossEncoder` from a local model directory, offline.

A cross-encoder reads the question and a passage together and scores how well the passage answers it:
slower than comparing vectors (one model call per passage), so it reorders only the first-stage top
`rerank_depth` hits. The passage it reads is what the embedder embedded: title and section path in
front of the chunk. Nothing is fetched from a hub: `RAGBUS_RETRIEVAL_RERANKER_MODEL` is a directory (or
a hub name already in the local cache).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace

from chunking.splitter import embedding_text
from infra.models.embedder import model_dir
from kernel.errors import ConfigurationError
from kernel.ports import SearchHit


def passage(hit: SearchHit) -> str:
    return embedding_text(hit.title, list(hit.section_path), hit.text)


class CrossEncoderReranker:
    def __init__(self, model: str, batch_size: int = 16) -> None:
        if not model:
            raise ConfigurationError("RAGBUS_RETRIEVAL_RERANKER=cross-encoder needs RAGBUS_RETRIEVAL_RERANKER_MODEL: "
                                     "a local cross-encoder model directory")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from sentence_transformers import CrossEncoder

        try:
            self._model = CrossEncoder(str(model_dir(model)), device="cpu", local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"cannot load the cross-encoder {model!r}: {str(exc)[:200]}") from exc
        self.name = f"cross-encoder:{model}"
        self._batch = batch_size

    def scores(self, question: str, hits: Sequence[SearchHit]) -> list[float]:
        if not hits:
            return []
        raw = self._model.predict([(question, passage(h)) for h in hits], batch_size=self._batch,
                                  show_progress_bar=False, convert_to_numpy=True)
        return [float(s) for s in raw]

    def rerank(self, question: str, hits: Sequence[SearchHit]) -> list[SearchHit]:
        scores = self.scores(question, hits)
        order = sorted(range(len(hits)), key=lambda i: (-scores[i], i))
        return [replace(hits[i], score=round(scores[i], 6)) for i in order]
