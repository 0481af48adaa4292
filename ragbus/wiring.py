"""Builds adapters from settings: the embedded defaults unless a production backend is configured.

The production backends' client libraries are optional extras (pyproject.toml): a setting that selects a
backend whose package is not installed fails at start-up with one line naming the extra to install.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from infra.ops import logs
from infra.settings import Settings
from kernel.errors import ConfigurationError
from kernel.generations import FIRST, Build, Generation, serving
from kernel.ports import (
    AnswerCache,
    AnswerModel,
    ContentFetcher,
    ConversationStore,
    DocumentStore,
    Embedder,
    EmbeddingCache,
    QueryRewriter,
    Reranker,
    VectorIndex,
)
from retrieval.embedding import passage_identity, with_prefix
from retrieval.fusion import Weights
from retrieval.retriever import Mode, RetrievalConfig

log = logs.get(__name__)
#: ragbus's own top-level packages: a missing module among these is a broken install, not a missing extra.
_OWN = {"infra", "engine", "kernel", "schemas", "chunking", "retrieval", "streams", "consumers", "ragbus"}


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


def build_answer_cache(settings: Settings) -> AnswerCache:
    """Beside the document store, in a table (SQLite) or collection (MongoDB) of its own."""
    if settings.mongodb.uri is not None:
        with _backend("mongodb", "RAGBUS_MONGODB_URI"):
            from infra.stores.mongo import MongoAnswerCache, connect
        return MongoAnswerCache(connect(settings.mongodb), settings.mongodb.database)
    from pathlib import Path

    from infra.stores.sqlite import SqliteAnswerCache

    return SqliteAnswerCache(Path(sqlite_path(settings)))


def build_conversations(settings: Settings) -> ConversationStore:
    """Beside the document store, in a table (SQLite) or collection (MongoDB) of its own."""
    c = settings.conversation
    if settings.mongodb.uri is not None:
        with _backend("mongodb", "RAGBUS_MONGODB_URI"):
            from infra.stores.conversations_mongo import MongoConversationStore
            from infra.stores.mongo import connect
        return MongoConversationStore(connect(settings.mongodb), settings.mongodb.database, max_turns=c.max_turns,
                                      ttl_s=c.ttl_s)
    from pathlib import Path

    from infra.stores.conversations_sqlite import SqliteConversationStore

    return SqliteConversationStore(Path(sqlite_path(settings)), max_turns=c.max_turns, ttl_s=c.ttl_s)


def build_condenser(settings: Settings) -> QueryRewriter | None:
    """Claude rewriting follow-ups into standalone search queries when a key is set (and not turned off)."""
    if settings.conversation.rewrite == "offline" or settings.anthropic.api_key is None:
        return None
    with _backend("claude", "RAGBUS_ANTHROPIC_API_KEY (or ANTHROPIC_API_KEY)"):
        from infra.models.claude_retrieval import ClaudeRewriter, client_for
    return ClaudeRewriter(client_for(settings.anthropic), settings.retrieval.claude_model, style="standalone",
                          timeout_s=settings.retrieval.model_timeout_s)


def build_index(settings: Settings, dim: int, generation: str = FIRST, build: Build | None = None) -> VectorIndex:
    """`generation`'s index (kernel/generations.py): Weaviate when RAGBUS_WEAVIATE_URL is set, else LanceDB in
    the data directory; the generation picks the collection or table. The index records the embedding model
    (and passage prefix) and refuses to open under another: the generation's recorded `build` when given (a
    generation is always opened with its own model, whatever the settings say now), else the settings'."""
    model = (passage_identity(build.model, build.passage_prefix) if build is not None
             else passage_identity(settings.embedder.model, settings.embedder.passage_prefix))
    if settings.weaviate.url is not None:
        with _backend("weaviate", "RAGBUS_WEAVIATE_URL"):
            from infra.stores.weaviate import WeaviateVectorIndex, connect
        return WeaviateVectorIndex(connect(settings.weaviate), settings.weaviate.collection, dim, model, generation)
    from infra.stores.lance import LanceVectorIndex

    return LanceVectorIndex(settings.data_dir / "lance", dim, model, generation)


def build_fetcher(settings: Settings) -> ContentFetcher:
    """Reads content_url from the schemes, hosts, buckets and directories RAGBUS_FETCH_* allows (none by
    default: every URL is then refused with a reason that says how to allow it)."""
    from infra import content

    return content.build(settings.fetch)


def build_embedder(settings: Settings) -> Embedder:
    """The bare model (no prefix: `passage_embedder` and `query_embedder` add the prefixes), on ONNX Runtime
    or torch as RAGBUS_EMBEDDER_BACKEND says."""
    if settings.embedder.backend == "onnx":
        from infra.models.onnx_embedder import OnnxEmbedder

        return OnnxEmbedder(settings.embedder, settings.onnx_dir())
    with _backend("torch", "RAGBUS_EMBEDDER_BACKEND=torch"):
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
                        exact_ratio=r.exact_match_ratio, parent_weight=r.parent_weight,
                        strong_keyword_alpha=r.strong_keyword_alpha, strong_keyword_score=r.strong_keyword_score))


def build_reranker(settings: Settings) -> Reranker | None:
    r = settings.retrieval
    if r.reranker == "cross-encoder":
        with _backend("torch", "RAGBUS_RETRIEVAL_RERANKER=cross-encoder"):
            from infra.models.reranker import CrossEncoderReranker

        return CrossEncoderReranker(r.reranker_model)
    if r.reranker == "claude":
        with _backend("claude", "RAGBUS_RETRIEVAL_RERANKER=claude"):
            from infra.models.claude_retrieval import ClaudeReranker, client_for
        return ClaudeReranker(client_for(settings.anthropic), r.claude_model, timeout_s=r.model_timeout_s,
                              depth=r.rerank_depth)
    return None


def build_rewriter(settings: Settings) -> QueryRewriter | None:
    r = settings.retrieval
    if r.rewrite == "none":
        return None
    with _backend("claude", f"RAGBUS_RETRIEVAL_REWRITE={r.rewrite}"):
        from infra.models.claude_retrieval import ClaudeRewriter, client_for
    return ClaudeRewriter(client_for(settings.anthropic), r.claude_model, style=r.rewrite,
                          timeout_s=r.model_timeout_s)


def build_answer_model(settings: Settings) -> AnswerModel:
    """Claude when a key is set; otherwise the offline extractive answerer (answers say degraded). Claude's
    start-up check (key, models) is the answerer's guard's to run: a refusal degrades, it does not stop."""
    if settings.anthropic.api_key is not None:
        with _backend("claude", "RAGBUS_ANTHROPIC_API_KEY (or ANTHROPIC_API_KEY)"):
            from infra.models.claude import ClaudeAnswerer
        return ClaudeAnswerer(settings.anthropic, agentic_steps=settings.answerer.agentic_max_steps)
    from retrieval.extractive import ExtractiveAnswerer

    return ExtractiveAnswerer()


def build_of(settings: Settings) -> Build:
    """What an index generation built with these settings records (kernel/generations.py)."""
    e, c = settings.embedder, settings.chunker
    return Build(model=e.model, query_prefix=e.query_prefix, passage_prefix=e.passage_prefix,
                 chunk_size=c.size_tokens, chunk_overlap=c.overlap_tokens)


def for_generation(settings: Settings, build: Build) -> Settings:
    """The settings with a generation's recorded build in place of the configured model and chunking: a stage
    works on each generation as it was built, whatever the environment says now."""
    embedder = settings.embedder.model_copy(update={
        "model": build.model, "query_prefix": build.query_prefix, "passage_prefix": build.passage_prefix})
    chunker = settings.chunker.model_copy(update={"size_tokens": build.chunk_size,
                                                  "overlap_tokens": build.chunk_overlap})
    return settings.model_copy(update={"embedder": embedder, "chunker": chunker})


def notice_differences(settings: Settings, generations: list[Generation], stage: str) -> None:
    """At start-up: when the configured model or chunking differs from the serving generation's, say which
    generation serves, what differs and the command that builds one with the configured settings. The stage
    goes on with the serving generation's build (it does not refuse: the index it serves is intact)."""
    now = serving(generations)
    differs = now.build.differences(build_of(settings))
    if differs:
        log.warning("the configured embedding model or chunking differs from the serving index generation's; "
                    "serving it as it was built", stage=stage, serving=now.name, differs="; ".join(differs),
                    to_adopt="ragbus reindex start (builds a new generation with the configured settings while "
                             f"{now.name} keeps serving), then ragbus reindex switch")
