"""Embedding models other than the default: a model directory, its dimension read from the model,
query and passage prefixes as a wrapper, and an index that refuses vectors of another model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from infra.models.embedder import SentenceTransformerEmbedder, embedding_dim, model_dir
from infra.settings import EmbedderSettings, Settings
from infra.stores.lance import LanceVectorIndex
from kernel.errors import ConfigurationError
from ragbus import wiring
from retrieval.embedding import Prefixed, passage_identity, with_prefix
from tests.doubles import HashEmbedder

TEXTS = ["query: how are offsets committed", "passage: consumers commit offsets", "penguins in winter"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_models import build_sentence_transformer

    return build_sentence_transformer(tmp_path_factory.mktemp("tiny-st"), TEXTS, out_dim=8)


def test_a_model_directory_works_and_its_dimension_is_read_without_loading_it(tiny_model: Path) -> None:
    assert embedding_dim(str(tiny_model)) == 8  # the Dense layer's out_features, not the transformer's 16
    embedder = SentenceTransformerEmbedder(EmbedderSettings(model=str(tiny_model)))
    vectors = embedder.embed(TEXTS)
    assert embedder.dim == 8 and vectors.shape == (3, 8)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_an_unknown_model_is_one_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="local Hugging Face cache"):
        model_dir("no-such-org/no-such-model")
    with pytest.raises(ConfigurationError, match="nothing is downloaded"):
        model_dir("/nonexistent/model")


def test_prefixes_wrap_any_embedder() -> None:
    inner = HashEmbedder(16)
    assert with_prefix(inner, "") is inner  # no prefix: the default model's names and vectors unchanged
    query = with_prefix(inner, "query: ")
    assert isinstance(query, Prefixed) and query.dim == 16 and query.name != inner.name
    assert np.allclose(query.embed(["offsets"]), inner.embed(["query: offsets"]))
    assert inner.calls[-2] == ["query: offsets"]


def test_the_composition_root_puts_each_prefix_on_its_side() -> None:
    settings = Settings(embedder=EmbedderSettings(query_prefix="query: ", passage_prefix="passage: "))
    inner = HashEmbedder(16)
    wiring.query_embedder(settings, inner).embed(["q"])
    wiring.passage_embedder(settings, inner).embed(["p"])
    assert inner.calls == [["query: q"], ["passage: p"]]


def test_an_index_refuses_vectors_of_another_model(tmp_path: Path) -> None:
    LanceVectorIndex(tmp_path / "lance", 8, "model-a").close()
    LanceVectorIndex(tmp_path / "lance", 8, "model-a").close()  # the same model reopens it
    with pytest.raises(ConfigurationError, match="model-a"):
        LanceVectorIndex(tmp_path / "lance", 8, "model-b")
    with pytest.raises(ConfigurationError, match="model-a"):  # a passage prefix makes other vectors too
        LanceVectorIndex(tmp_path / "lance", 8, passage_identity("model-a", "passage: "))


def test_an_index_from_before_models_were_recorded_adopts_the_configured_one(tmp_path: Path) -> None:
    LanceVectorIndex(tmp_path / "lance", 8).close()  # no model recorded
    LanceVectorIndex(tmp_path / "lance", 8, "model-a").close()
    with pytest.raises(ConfigurationError):
        LanceVectorIndex(tmp_path / "lance", 8, "model-b")


def test_an_index_of_the_previous_schema_is_upgraded_in_place(tmp_path: Path) -> None:
    """A LanceDB table as ragbus wrote it before section entries: one `search_text` keyword column."""
    import json

    import lancedb
    import pyarrow as pa
    from lancedb.index import FTS

    from kernel.ports import Level, SearchRequest

    old = pa.schema([
        pa.field("chunk_id", pa.string()), pa.field("tenant", pa.string()), pa.field("document_id", pa.string()),
        pa.field("version", pa.int64()), pa.field("idx", pa.int32()), pa.field("text", pa.string()),
        pa.field("title", pa.string()), pa.field("section_path", pa.string()), pa.field("source", pa.string()),
        pa.field("meta", pa.list_(pa.string())), pa.field("metadata", pa.string()),
        pa.field("search_text", pa.string()), pa.field("vector", pa.list_(pa.float32(), 8))])
    db = lancedb.connect(str(tmp_path / "lance"))
    table = db.create_table("chunks", schema=old)
    table.add([{"chunk_id": "c1", "tenant": "t", "document_id": "d", "version": 1, "idx": 0,
                "text": "Consumers commit offsets.", "title": "Kafka", "section_path": json.dumps([]), "source": "",
                "meta": [], "metadata": "{}", "search_text": "Kafka\nConsumers commit offsets.",
                "vector": np.ones(8, dtype=np.float32) / np.sqrt(8)}])
    table.create_index("search_text", config=FTS(), replace=True)
    index = LanceVectorIndex(tmp_path / "lance", 8, "model-a")
    found = index.search("t", SearchRequest(text="committing", vector=np.ones(8, dtype=np.float32), candidates=5))
    assert [h.chunk_id for h in found.keyword] == ["c1"] and found.dense[0].level is Level.CHUNK
    assert index.count("t") == 1 and "search_text" not in index._table.schema.names


def test_a_missing_onnx_export_in_a_read_only_directory_is_one_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An image ships only the float32 export in a directory its user cannot write: asking for the int8 model
    there must say what to do, not raise a PermissionError from the lock file."""
    from infra.models import onnx_embedder

    def refused(path: Path) -> None:  # what open() says for a directory the process may not write (not as root)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(onnx_embedder, "_locked", refused)
    with pytest.raises(ConfigurationError, match="RAGBUS_EMBEDDER_ONNX_DIR .* is not writable"):
        onnx_embedder.ensure_exported(EmbedderSettings(onnx_int8=True), tmp_path)
