"""Builds adapters from settings: the embedded defaults unless a production backend is configured."""

from __future__ import annotations

from infra.settings import Settings
from kernel.ports import AnswerModel, DocumentStore, Embedder, EmbeddingCache, QueryRewriter, Reranker, VectorIndex
from retrieval.embedding import passage_identity, with_prefix
from retrieval.fusion import Weights
from retrieval.retriever import Mode, RetrievalConfig


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
    """Weaviate when RAGBUS_WEAVIATE_URL is set, else LanceDB in the data directory. The index records the
    embedding model (and passage prefix) and refuses to open under another."""
    model = passage_identity(settings.embedder.model, settings.embedder.passage_prefix)
    if settings.weaviate.url is not None:
        from infra.stores.weaviate import WeaviateVectorIndex, connect

        return WeaviateVectorIndex(connect(settings.weaviate), settings.weaviate.collection, dim, model)
    from infra.stores.lance import LanceVectorIndex

    return LanceVectorIndex(settings.data_dir / "lance", dim, model)


def build_embedder(settings: Settings) -> Embedder:
    """The bare model (no prefix): `passage_embedder` and `query_embedder` add the prefixes."""
    from infra.models.embedder import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(settings.embedder)


def passage_embedder(settings: Settings, model: Embedder | None = None) -> Embedder:
    return with_prefix(model or build_embedder(settings), settings.embedder.passage_prefix)


def query_embedder(settings: Settings, model: Embedder | None = None) -> Embedder:
    return with_prefix(model or build_embedder(settings), settings.embedder.query_prefix)


def retrieval_config(settings: Settings) -> RetrievalConfig:
    r = settings.retrieval
    return RetrievalConfig(
        candidates=r.candidates, mode=Mode(r.mode), sections=r.sections, heading_weight=r.heading_weight,
        per_section=r.per_section, rerank_depth=r.rerank_depth,
        weights=Weights(alpha=r.alpha, section_weight=r.section_weight,
                        keyword_section_weight=r.keyword_section_weight, bonus=r.multi_chunk_bonus,
                        exact_ratio=r.exact_match_ratio))


def build_reranker(settings: Settings) -> Reranker | None:
    r = settings.retrieval
    if r.reranker == "cross-encoder":
        from infra.models.reranker import CrossEncoderReranker

        return CrossEncoderReranker(r.reranker_model)
    if r.reranker == "claude":
        from infra.models.claude_retrieval import ClaudeReranker, client_for

        return ClaudeReranker(client_for(settings.anthropic), r.claude_model, timeout_s=r.model_timeout_s,
                              depth=r.rerank_depth)
    return None


def build_rewriter(settings: Settings) -> QueryRewriter | None:
    r = settings.retrieval
    if r.rewrite == "none":
        return None
    from infra.models.claude_retrieval import ClaudeRewriter, client_for

    return ClaudeRewriter(client_for(settings.anthropic), r.claude_model, style=r.rewrite,
                          timeout_s=r.model_timeout_s)


def build_answer_model(settings: Settings) -> AnswerModel:
    """Claude when a key is set; otherwise the offline extractive answerer (answers say degraded)."""
    if settings.anthropic.api_key is not None:
        from infra.models.claude import ClaudeAnswerer

        model = ClaudeAnswerer(settings.anthropic, agentic_steps=settings.answerer.agentic_max_steps)
        model.check()
        return model
    from retrieval.extractive import ExtractiveAnswerer

    return ExtractiveAnswerer()
