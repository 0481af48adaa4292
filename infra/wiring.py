"""Builds adapters from settings: the embedded defaults unless a production backend is configured.

The production backends' client libraries are optional extras (pyproject.toml): a setting that selects a
backend whose package is not installed fails at start-up with one line naming the extra to install.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from infra.settings import Settings
from kernel.errors import ConfigurationError
from kernel.ports import AnswerModel, ContentFetcher, DocumentStore, Embedder, EmbeddingCache, VectorIndex

#: ragbus's own top-level packages: a missing module among these is a broken install, not a missing extra.
_OWN = {"infra", "kernel", "schemas", "chunking", "retrieval", "streams", "consumers", "ragbus"}


@contextmanager
def _backend(extra: str, setting: str) -> Iterator[None]:
    """Imports inside this block belong to the optional extra `extra`, selected by `setting`."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] in _OWN:
            raise
        raise ConfigurationError(
            f"{setting} is set but the {extra} backend is not installed (no module named {exc.name!r}): "
            f"pip install 'ragbus[{extra}]'") from exc


def sqlite_path(settings: Settings) -> str:
    return str(settings.data_dir / "ragbus.sqlite")


def build_store(settings: Settings) -> DocumentStore:
    """MongoDB when RAGBUS_MONGODB_URI is set, else SQLite in the data directory."""
    if settings.mongodb.uri is not None:
        with _backend("mongodb", "RAGBUS_MONGODB_URI"):
            from infra.stores.mongo import MongoDocumentStore, connect
        return MongoDocumentStore(connect(settings.mongodb), settings.mongodb.database)
    from pathlib import Path

    from infra.stores.sqlite import SqliteDocumentStore

    return SqliteDocumentStore(Path(sqlite_path(settings)))


def build_cache(settings: Settings) -> EmbeddingCache:
    if settings.mongodb.uri is not None:
        with _backend("mongodb", "RAGBUS_MONGODB_URI"):
            from infra.stores.mongo import MongoEmbeddingCache, connect
        return MongoEmbeddingCache(connect(settings.mongodb), settings.mongodb.database)
    from pathlib import Path

    from infra.stores.sqlite import SqliteEmbeddingCache

    return SqliteEmbeddingCache(Path(sqlite_path(settings)))


def build_index(settings: Settings, dim: int) -> VectorIndex:
    """Weaviate when RAGBUS_WEAVIATE_URL is set, else LanceDB in the data directory."""
    if settings.weaviate.url is not None:
        with _backend("weaviate", "RAGBUS_WEAVIATE_URL"):
            from infra.stores.weaviate import WeaviateVectorIndex, connect
        return WeaviateVectorIndex(connect(settings.weaviate), settings.weaviate.collection, dim)
    from infra.stores.lance import LanceVectorIndex

    return LanceVectorIndex(settings.data_dir / "lance", dim)


def build_fetcher(settings: Settings) -> ContentFetcher:
    """Reads content_url from the schemes, hosts, buckets and directories RAGBUS_FETCH_* allows (none by
    default: every URL is then refused with a reason that says how to allow it)."""
    from infra import content

    return content.build(settings.fetch)


def build_embedder(settings: Settings) -> Embedder:
    """ONNX Runtime or torch, as RAGBUS_EMBEDDER_BACKEND says."""
    if settings.embedder.backend == "onnx":
        from infra.models.onnx_embedder import OnnxEmbedder

        return OnnxEmbedder(settings.embedder, settings.onnx_dir())
    with _backend("torch", "RAGBUS_EMBEDDER_BACKEND=torch"):
        from infra.models.embedder import SentenceTransformerEmbedder

        return SentenceTransformerEmbedder(settings.embedder)


def build_answer_model(settings: Settings) -> AnswerModel:
    """Claude when a key is set; otherwise the offline extractive answerer (answers say degraded)."""
    if settings.anthropic.api_key is not None:
        with _backend("claude", "RAGBUS_ANTHROPIC_API_KEY (or ANTHROPIC_API_KEY)"):
            from infra.models.claude import ClaudeAnswerer
        model = ClaudeAnswerer(settings.anthropic, agentic_steps=settings.answerer.agentic_max_steps)
        model.check()
        return model
    from retrieval.extractive import ExtractiveAnswerer

    return ExtractiveAnswerer()
