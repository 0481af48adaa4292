"""Settings: one pydantic-settings class per external system, aggregated in `Settings`.

Built once in the entrypoint and passed down; nothing reads the environment elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: Fetch wait against the local Tansu broker, which holds a fetch for its whole wait even when data arrives.
LOCAL_FETCH_WAIT_MS = 10


def _cfg(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, extra="ignore", frozen=True)


class KafkaSettings(BaseSettings):
    model_config = _cfg("RAGBUS_KAFKA_")

    #: Unset: use the local broker that `ragbus up` started (its address is in the data directory).
    bootstrap_servers: str | None = None
    topic_prefix: str = Field("ragbus.", pattern=r"^[A-Za-z0-9._-]{0,64}$")
    #: Tansu holds a group join for half the session timeout: keep it short locally (see README).
    session_timeout_ms: int = Field(6000, ge=1000, le=300_000)
    #: Extra librdkafka settings (JSON object), e.g. security.protocol / sasl.* for a managed cluster.
    client_config: dict[str, str] = Field(default_factory=dict)
    #: Most events a consumer stage (indexer, status, answerer) takes as one batch.
    poll_batch: int = Field(256, ge=1, le=10_000)
    #: How long an idle consumer stage blocks for its next event before it looks up (stop, lag). An
    #: event that arrives is handed over at once, whatever this says.
    poll_timeout_s: float = Field(0.25, gt=0, le=10)
    #: After a batch's first event, how much longer the indexer and status stages wait for more (0:
    #: take only what already arrived). Under load batches fill by themselves while the previous one
    #: is written; a linger only trades freshness for fewer, larger writes when the stream is thin.
    batch_linger_s: float = Field(0.0, ge=0, le=10)
    message_max_bytes: int = Field(2 * 1024 * 1024, ge=1024 * 1024)
    #: Longest a consumer's fetch waits at the broker for data (librdkafka `fetch.wait.max.ms`, aiokafka
    #: `fetch_max_wait_ms`). Kafka answers a waiting fetch as soon as data arrives, so there this only
    #: bounds idle requests; the local Tansu broker answers only when the wait runs out, so every hop
    #: through it costs up to this long. Unset: 10 ms against the local broker, 500 ms otherwise.
    fetch_wait_max_ms: int | None = Field(None, ge=1, le=30_000)
    #: The least fetch wait of the stages nobody waits on (StageSpec.waited_on: the status sink). Against the
    #: local broker every fetch costs it CPU whether it finds data or not, ~3% of a core per consumer idling at
    #: 10 ms (bench/RESULTS.md, issue 26).
    background_fetch_wait_ms: int = Field(500, ge=1, le=30_000)
    #: Partitions of every pipeline topic that `ragbus topics create` (and `ragbus up`) creates: the most
    #: processes of one stage that share its work. Fixed once the topics exist (more partitions would move
    #: a document's events to another partition and break their order): docs/operations.md, "Scaling out".
    partitions: int = Field(4, ge=1, le=10_000)
    #: Per-topic partitions by registry name, JSON, e.g. {"embedded.v1": 12, "dlq.embedder.v1": 2}; wins
    #: over `partitions` (dead-letter topics have 1 unless named here).
    topic_partitions: dict[str, int] = Field(default_factory=dict)
    #: Replicas of every topic ragbus creates; -1: the cluster's default.replication.factor.
    replication_factor: int = Field(-1, ge=-1, le=32)


class DecodeSettings(BaseSettings):
    """Bounds checked on every message's bytes *before* parsing, so no input can exhaust the parser."""

    model_config = _cfg("RAGBUS_DECODE_")

    #: Largest message value accepted (bytes), as the topics' max.message.bytes; larger ones are dead-lettered unread.
    max_bytes: int = Field(2 * 1024 * 1024, ge=1024)
    #: Deepest JSON nesting accepted; ragbus's own events nest 4 levels deep.
    max_depth: int = Field(32, ge=4, le=512)


class DeliverySettings(BaseSettings):
    """The delivery policy of every stage (engine/delivery.py), the same in both runtimes."""

    model_config = _cfg("RAGBUS_DELIVERY_")

    #: Attempts at a batch that fails transiently (RetryableError) before the stage reports itself broken.
    retry_attempts: int = Field(6, ge=1, le=100)
    #: Exponential backoff with jitter between attempts: first wait and cap (a retry_after wins).
    backoff_initial_s: float = Field(0.2, gt=0, le=60)
    backoff_max_s: float = Field(30.0, gt=0, le=600)
    #: The failure breaker: it opens when, within the window, at least `breaker_min_failures` events
    #: failed unexpectedly and they are at least `breaker_failure_ratio` of the events handled.
    breaker_window_s: float = Field(60.0, gt=0)
    breaker_min_failures: int = Field(5, ge=1)
    breaker_failure_ratio: float = Field(0.5, gt=0, le=1)
    #: While broken, the held batch is probed this often (doubling up to `probe_max_s`).
    probe_interval_s: float = Field(5.0, gt=0)
    probe_max_s: float = Field(120.0, gt=0)


class FetchSettings(BaseSettings):
    """Where a document's `content_url` may point, and how much ragbus reads (infra/content/). Nothing is
    readable until configured: an operator opts in per scheme, host, bucket and directory."""

    model_config = _cfg("RAGBUS_FETCH_")

    #: Comma-separated URL prefixes ragbus may read: `https://host[:port][/path/]` (`*.` before a domain
    #: allows its subdomains) and `s3://bucket[/prefix/]`. Empty: no https:// or s3:// content.
    allowed_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: Comma-separated directories whose files `file://` URLs may name (symlinks out of them are refused).
    file_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    #: Largest content read from one URL; larger sources are dead-lettered unread.
    max_bytes: int = Field(16 * 1024 * 1024, ge=1024, le=512 * 1024 * 1024)
    #: Time for one fetch, retries and redirects included; connecting alone gets `connect_timeout_s`.
    timeout_s: float = Field(30.0, gt=0, le=600)
    connect_timeout_s: float = Field(5.0, gt=0, le=60)
    max_redirects: int = Field(3, ge=0, le=10)
    #: Further attempts after a timeout, a dropped connection, 429 or 5xx, within `timeout_s`.
    retries: int = Field(2, ge=0, le=5)
    #: Let allowed host names resolve to private, loopback or other internal addresses (link-local and
    #: cloud metadata addresses stay refused). Off: an allowed name pointing inside is refused.
    allow_private_addresses: bool = False
    #: CA bundle (PEM) for https sources, e.g. a company CA; default: certifi's.
    ca_bundle: Path | None = None
    #: S3-compatible endpoint (MinIO, Ceph, R2...) and region; credentials come from boto3's usual chain.
    s3_endpoint_url: str | None = None
    s3_region: str | None = None

    @field_validator("allowed_urls", "file_roots", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part for part in value.replace(",", " ").split() if part]
        return value


class EmbedderSettings(BaseSettings):
    model_config = _cfg("RAGBUS_EMBEDDER_")

    #: "all-MiniLM-L6-v2" (the packaged offline copy), a sentence-transformers model directory, or a hub
    #: name already in the local Hugging Face cache. The vector index records it: an index built with
    #: another model (or other passage prefix) is refused at start-up.
    model: str = "all-MiniLM-L6-v2"
    #: Text put in front of every question / every passage before embedding, for models trained with
    #: prefixes: e5 wants "query: " and "passage: ", bge an instruction in front of queries only.
    query_prefix: str = Field("", max_length=200)
    passage_prefix: str = Field("", max_length=200)
    batch_size: int = Field(32, ge=1, le=1024)
    #: Events per micro-batch (across documents) and the longest wait to fill one.
    max_batch_events: int = Field(64, ge=1, le=10_000)
    batch_window_s: float = Field(0.05, ge=0, le=10)
    threads: int = Field(0, ge=0, le=256, description="threads of the model; 0 = the runtime's default")
    #: The embedder process's CPU priority (Unix nice, 0-19): it is batch work that would otherwise take
    #: every core from interactive queries on a shared machine. Measured on 2 cores while 200 documents were
    #: ingested: bench/RESULTS.md. Within a container it only orders the container's own processes.
    nice: int = Field(10, ge=0, le=19)
    #: "onnx": ONNX Runtime on a model exported once from the same weights (infra/models/onnx_embedder.py);
    #: "torch": sentence-transformers on torch, the reference.
    backend: Literal["onnx", "torch"] = "onnx"
    #: The ONNX model's MatMul weights in int8 (per-channel dynamic quantisation). Off by default: its vectors
    #: stay at cosine >= 0.99 to torch's, but the dev-set nDCG@10 dropped 0.026 (bench/RESULTS.md, issue 13);
    #: float32 gives torch's vectors exactly.
    onnx_int8: bool = False
    #: Where exported ONNX models are cached; unset: `<RAGBUS_DATA_DIR>/models`.
    onnx_dir: Path | None = None


class IndexSettings(BaseSettings):
    """The vector index's upkeep (the embedded LanceDB index; Weaviate maintains itself)."""

    model_config = _cfg("RAGBUS_INDEX_")

    #: How often the indexer process checks whether index upkeep is due (in its own thread, off the commit
    #: path): folding new rows into the full-text and vector indexes and compacting, when enough rows wait or
    #: one has waited long enough, at most a tenth of the time (infra/stores/lance_maintenance.py). Until then
    #: new rows are searched by a scan.
    maintain_every_s: float = Field(2.0, gt=0, le=3600)


class ChunkerSettings(BaseSettings):
    model_config = _cfg("RAGBUS_CHUNK_")

    size_tokens: int = Field(200, ge=16, le=510)
    overlap_tokens: int = Field(32, ge=0, le=256)


class RetrievalSettings(BaseSettings):
    """How the answerer (and every benchmark: bench/retrieval.py, `ragbus eval`) retrieves; see
    retrieval/fusion.py for the formula and bench/RESULTS.md for the measurements behind the defaults."""

    model_config = _cfg("RAGBUS_RETRIEVAL_")

    #: hybrid (both retrievers, fused), dense (vectors only) or keyword (BM25 only).
    mode: Literal["hybrid", "dense", "keyword"] = "hybrid"
    #: Hybrid weight: 1.0 = vector only, 0.0 = BM25 only (Weaviate's convention), for a query whose keyword
    #: evidence is not strong (below).
    alpha: float = Field(0.7, ge=0.0, le=1.0)
    #: Hybrid weight for a query whose best BM25 match scores at least `strong_keyword_score` points per
    #: distinct analysed query term (its terms are rare and found together). Equal to `alpha`: fixed weights.
    strong_keyword_alpha: float = Field(0.5, ge=0.0, le=1.0)
    strong_keyword_score: float = Field(2.5, ge=0.0, le=1000.0)
    #: Candidates each retriever takes at each level before fusion: the one candidate depth.
    candidates: int = Field(100, ge=1, le=1000)
    #: Search section entries (title, heading path and lead of each section) as well as chunks.
    sections: bool = True
    #: Share of the section entries' evidence within each retriever (the rest is the best chunk's).
    section_weight: float = Field(0.85, ge=0.0, le=1.0)
    keyword_section_weight: float = Field(1.0, ge=0.0, le=1.0)
    #: BM25 over the title and heading path, weighed against BM25 over the text (0: text only). The default is
    #: small: a title match decides only where the text matches little (a name that occurs only in a title).
    heading_weight: float = Field(0.02, ge=0.0, le=10.0)
    #: Bounded bonus for a section with several well-matching chunks.
    multi_chunk_bonus: float = Field(0.0, ge=0.0, le=1.0)
    #: Parent-document evidence: a section gains this share of the best score of another section of the
    #: same parent (its document's metadata `parent`, else the document; 0: off, the default).
    parent_weight: float = Field(0.0, ge=0.0, lt=1.0)
    #: A keyword hit ranked first with this many times the runner-up's score is kept first (0: off).
    exact_match_ratio: float = Field(2.0, ge=0.0, le=100.0)
    #: Chunks cited per ranked section.
    per_section: int = Field(1, ge=1, le=20)
    #: Second-stage reranker: none, a sentence-transformers cross-encoder (`reranker_model`: a local
    #: model directory), or Claude (listwise, needs an Anthropic key).
    reranker: Literal["none", "cross-encoder", "claude"] = "none"
    reranker_model: str = ""
    #: Hits the reranker reorders (and the most it is sent): bounds its cost.
    rerank_depth: int = Field(20, ge=2, le=100)
    #: Query rewriting with Claude: none, multi (paraphrases searched too) or hyde (a hypothetical answer).
    rewrite: Literal["none", "multi", "hyde"] = "none"
    #: Claude model for reranking and rewriting (small and fast: they sit in front of every answer).
    claude_model: str = "claude-haiku-4-5"
    #: Time the reranker or rewriter may take per query before retrieval goes on without it.
    model_timeout_s: float = Field(10.0, gt=0, le=120)


class AnswererSettings(BaseSettings):
    model_config = _cfg("RAGBUS_ANSWERER_")

    #: Queries answered at once by one answerer process (model calls are I/O-bound).
    concurrency: int = Field(8, ge=1, le=256)
    #: Follow-up searches the model may make in agentic mode.
    agentic_max_steps: int = Field(3, ge=0, le=10)
    #: Reuse an answer for the same prompt version, model, normalised question and chunks.
    cache_answers: bool = True
    #: While the answer model refuses every request (consumers/model_guard.py), one query is let through as
    #: a probe this often (doubling up to `model_probe_max_s`); the others are answered extractively at once.
    model_probe_s: float = Field(30.0, gt=0, le=3600)
    model_probe_max_s: float = Field(300.0, gt=0, le=86_400)
    #: Requests refused in a row for their content (HTTP 400, 413, 422) after which the refusals are taken
    #: as a configuration (a model name, a parameter) and the stage degrades.
    model_refusals: int = Field(3, ge=1, le=1000)


class ConversationSettings(BaseSettings):
    """Conversations: follow-up questions answered in the context of their earlier turns (docs/subscribing.md)."""

    model_config = _cfg("RAGBUS_CONVERSATION_")

    #: Turns kept per conversation (the newest); older ones are deleted as new ones are stored.
    max_turns: int = Field(20, ge=1, le=1000)
    #: A turn is deleted this long after it was answered; a conversation whose turns all expired starts afresh.
    ttl_s: float = Field(24 * 3600.0, gt=0, le=365 * 86_400)
    #: Estimated tokens (characters / 4) of earlier turns given to the model as prior messages: the newest turns
    #: that fit are sent, and the answer says how many were left out (`dropped_turns`).
    context_tokens: int = Field(4_000, ge=0, le=200_000)
    #: How a follow-up is rewritten into a standalone search query: `auto` asks Claude when an Anthropic key is
    #: set (RAGBUS_RETRIEVAL_CLAUDE_MODEL) and falls back to the offline rule when it fails; `offline` always uses
    #: the offline rule (retrieval/conversation.py).
    rewrite: Literal["auto", "offline"] = "auto"


class AclSettings(BaseSettings):
    """Document permissions (kernel/permissions.py, docs/security.md)."""

    model_config = _cfg("RAGBUS_ACL_")

    #: Documents without an ACL are readable by no query (deny by default). Off: by every query of their
    #: tenant, as before permissions existed. Takes effect at once: it changes what queries ask, not the index.
    deny_unlisted: bool = False


class AnthropicSettings(BaseSettings):
    model_config = _cfg("RAGBUS_ANTHROPIC_")

    api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("RAGBUS_ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY")
    )
    base_url: str | None = Field(None, validation_alias=AliasChoices("RAGBUS_ANTHROPIC_BASE_URL",
                                                                     "ANTHROPIC_BASE_URL"))
    model: str = "claude-sonnet-4-6"
    #: Tried when the primary model keeps failing (overloaded, rate limited, 5xx); empty to disable.
    fallback_model: str | None = "claude-haiku-4-5"
    max_tokens: int = Field(1024, ge=1, le=64_000)
    #: Unset by default: the current Messages API models choose their own sampling; set it for a
    #: model or gateway that accepts `temperature` (sent as an extra body field).
    temperature: float | None = Field(None, ge=0.0, le=1.0)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(3, ge=0, le=10)


class WeaviateSettings(BaseSettings):
    model_config = _cfg("RAGBUS_WEAVIATE_")

    url: str | None = None
    grpc_port: int = 50051
    api_key: SecretStr | None = None
    timeout_s: float = 30.0
    collection: str = "RagbusChunk"


class MongoSettings(BaseSettings):
    model_config = _cfg("RAGBUS_MONGODB_")

    uri: SecretStr | None = None
    database: str = "ragbus"
    timeout_ms: int = 5000


class TracingSettings(BaseSettings):
    """OpenTelemetry: spans are exported over OTLP only when the standard endpoint variable is set; the
    exporter reads the other standard OTEL_EXPORTER_OTLP_* variables (headers, protocol, certificates)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    otlp_endpoint: str | None = Field(None, validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_ENDPOINT",
                                                                          "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    service_name: str | None = Field(None, validation_alias=AliasChoices("OTEL_SERVICE_NAME"))
    #: "grpc" or "http/protobuf" (the OTLP default).
    otlp_protocol: str = Field("http/protobuf", validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                                                                             "OTEL_EXPORTER_OTLP_PROTOCOL"))


class Settings(BaseSettings):
    model_config = _cfg("RAGBUS_")

    data_dir: Path = Path(".ragbus")
    log_level: str = "INFO"
    log_format: Literal["console", "json"] = "console"
    #: Address and port of a worker's HTTP endpoints (/metrics, /health, /livez, /readyz); port 0 disables
    #: them. Loopback by default; a container sets 0.0.0.0 so the kubelet and Prometheus can reach them.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(0, ge=0, le=65535)
    #: Stall detection (infra/ops/health.py): a partition with lag whose committed offset has not moved
    #: for longer than the bound is stalled. Unset `stall_after_s`: the bound is derived from the stage's
    #: own batches, max(stall_min_s, stall_factor x the longest of its recent batch durations); set: fixed.
    stall_after_s: float | None = Field(None, gt=0)
    stall_min_s: float = Field(120.0, gt=0)
    stall_factor: float = Field(3.0, ge=1)
    #: Liveness: a stage whose loop has not turned for this long (outside a batch) is not live.
    liveness_timeout_s: float = Field(60.0, gt=0)
    #: Stamped on `ragbus_build_info` and trace resources (the image sets it to the commit it was built from).
    build_revision: str = Field("unknown", max_length=64)

    tracing: TracingSettings = Field(default_factory=TracingSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    decode: DecodeSettings = Field(default_factory=DecodeSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    embedder: EmbedderSettings = Field(default_factory=EmbedderSettings)
    chunker: ChunkerSettings = Field(default_factory=ChunkerSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    fetch: FetchSettings = Field(default_factory=FetchSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    answerer: AnswererSettings = Field(default_factory=AnswererSettings)
    acl: AclSettings = Field(default_factory=AclSettings)
    conversation: ConversationSettings = Field(default_factory=ConversationSettings)
    anthropic: AnthropicSettings = Field(default_factory=AnthropicSettings)
    weaviate: WeaviateSettings = Field(default_factory=WeaviateSettings)
    mongodb: MongoSettings = Field(default_factory=MongoSettings)

    def onnx_dir(self) -> Path:
        return self.embedder.onnx_dir or self.data_dir / "models"

    def health_dir(self) -> Path:
        return self.data_dir / "health"

    def broker_file(self) -> Path:
        return self.data_dir / "broker.json"

    def fetch_wait_ms(self, waited_on: bool = True) -> int:
        """The consumers' fetch wait: as configured, else short for the local broker (see KafkaSettings); at
        least `background_fetch_wait_ms` for a stage nobody waits on."""
        if self.kafka.fetch_wait_max_ms is not None:
            wait = self.kafka.fetch_wait_max_ms
        else:
            wait = LOCAL_FETCH_WAIT_MS if self.kafka.bootstrap_servers is None else 500
        return wait if waited_on else max(wait, self.kafka.background_fetch_wait_ms)

    def resolve_bootstrap(self) -> str | None:
        """The configured bootstrap servers, else the local broker recorded by `ragbus up` (unless it is
        recorded as lost: engine/broker.py)."""
        if self.kafka.bootstrap_servers:
            return self.kafka.bootstrap_servers
        try:
            info = json.loads(self.broker_file().read_text())
        except (OSError, ValueError):
            return None
        value = info.get("bootstrap")
        return value if isinstance(value, str) and "lost" not in info else None
