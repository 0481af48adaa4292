"""Builds adapters from settings: the embedded defaults unless a production backend is configured."""

from __future__ import annotations

from infra.settings import Settings
from kernel.ports import AnswerModel, DocumentStore, Embedder, EmbeddingCache, VectorIndex


def sqlite_path(settings: Settings) -> str:
    return str(settings.data_dir / "ragbus.sqlite")


def build_store(settings: Settings) -> DocumentStore:
    """MongoDB when RAGBUS_MONGODB_URI is set, else SQLite in the data directory."""
    if settings.mongodb.uri is not None:
        from infra.stores.mongo import MongoDocumentStore, connect

        return MongoDocumentStore(connect(settings.mongodb), settings.mongodb.database)
    from pathlib import Path

    from infra.stores.sqlite import SqliteDocumentStore

    return SqliteDocumentStore(Path(sqlite_path(settings)))


def build_cache(settings: Settings) -> EmbeddingCache:
    if settings.mongodb.uri is not None:
        from infra.stores.mongo import MongoEmbeddingCache, connect

        return MongoEmbeddingCache(connect(settings.mongodb), settings.mongodb.database)
    from pathlib import Path

    from infra.stores.sqlite import SqliteEmbeddingCache

    return SqliteEmbeddingCache(Path(sqlite_path(settings)))


def build_index(settings: Settings, dim: int) -> VectorIndex:
    """Weaviate when RAGBUS_WEAVIATE_URL is set, else LanceDB in the data directory."""
    if settings.weaviate.url is not None:
        from infra.stores.weaviate import WeaviateVectorIndex, connect

        return WeaviateVectorIndex(connect(settings.weaviate), settings.weaviate.collection, dim)
    from infra.stores.lance import LanceVectorIndex

    return LanceVectorIndex(settings.data_dir / "lance", dim)


def build_embedder(settings: Settings) -> Embedder:
    """ONNX Runtime or torch, as RAGBUS_EMBEDDER_BACKEND says."""
    if settings.embedder.backend == "onnx":
        from infra.models.onnx_embedder import OnnxEmbedder

        return OnnxEmbedder(settings.embedder, settings.onnx_dir())
    from infra.models.embedder import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(settings.embedder)


def build_answer_model(settings: Settings) -> AnswerModel:
    """Claude when a key is set; otherwise the offline extractive answerer (answers say degraded)."""
    if settings.anthropic.api_key is not None:
        from infra.models.claude import ClaudeAnswerer

        model = ClaudeAnswerer(settings.anthropic, agentic_steps=settings.answerer.agentic_max_steps)
        model.check()
        return model
    from retrieval.extractive import ExtractiveAnswerer

    return ExtractiveAnswerer()
