"""The Embedder contract: every embedding backend (sentence-transformers, and any other) passes it."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from kernel.ports import Embedder
from tests.conftest import ONNX_CACHE

TEXTS = ["Kafka keeps messages ordered within a partition.",
         "Consumers commit offsets after processing a batch.",
         "Penguins huddle together to stay warm in winter."]


@pytest.fixture(scope="module", params=["sentence-transformers", "onnx-fp32", "onnx-int8"])
def embedder(request: pytest.FixtureRequest) -> Iterator[Embedder]:
    from infra.settings import EmbedderSettings

    if request.param.startswith("onnx"):
        from infra.models.onnx_embedder import OnnxEmbedder

        yield OnnxEmbedder(EmbedderSettings(backend="onnx", onnx_int8=request.param == "onnx-int8"), ONNX_CACHE)
        return
    from infra.models.embedder import SentenceTransformerEmbedder

    yield SentenceTransformerEmbedder(EmbedderSettings(backend="torch"))


def test_one_normalised_float32_row_per_text(embedder: Embedder) -> None:
    vectors = embedder.embed(TEXTS)
    assert vectors.shape == (3, embedder.dim) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    assert embedder.embed([]).shape == (0, embedder.dim)


def test_deterministic_and_independent_of_the_batch(embedder: Embedder) -> None:
    together = embedder.embed(TEXTS)
    alone = np.stack([embedder.embed([t])[0] for t in reversed(TEXTS)])[::-1]
    assert np.allclose(together, alone, atol=1e-4)
    assert np.allclose(embedder.embed(TEXTS), together, atol=1e-6)


def test_a_large_batch_gives_each_text_its_own_vector(embedder: Embedder) -> None:
    """Enough texts of different lengths that a backend working across texts (the ONNX model's pool) takes
    them out of order: each vector must still land on its own text."""
    texts = [f"{t} " * n for n in (1, 7, 3, 12, 2) for t in TEXTS]
    together = embedder.embed(texts)
    alone = np.stack([embedder.embed([t])[0] for t in texts])
    assert np.allclose(together, alone, atol=1e-4)


def test_related_texts_are_closer_than_unrelated_ones(embedder: Embedder) -> None:
    kafka, offsets, penguins = embedder.embed(TEXTS)
    query = embedder.embed(["How does Kafka order messages?"])[0]
    assert float(query @ kafka) > float(query @ penguins)
    assert float(kafka @ offsets) > float(kafka @ penguins)


def test_long_and_unusual_text_is_embedded_not_refused(embedder: Embedder) -> None:
    vectors = embedder.embed(["word " * 5000, "🚀 カフカ Кафка", "\x00\x01"])
    assert vectors.shape == (3, embedder.dim) and np.isfinite(vectors).all()
