"""Traces with the SDK's in-memory exporter: each document is one connected trace from the client's publish
through chunker, embedder and indexer (and status), each query one from publish to answer; the runtimes
carry W3C `traceparent` in the Kafka headers the delivery policy writes. Without OTLP configured nothing is
installed, and an incoming traceparent passes through unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from chunking.splitter import Chunker
from consumers import status as status_stage
from consumers.answerer import Answerer
from consumers.indexer import Indexer
from engine.delivery import BatchPolicy
from engine.records import Send, SourceRecord
from infra.models.embedder import load_tokenizer
from infra.ops import tracing
from infra.ops.metrics import Metrics
from infra.settings import Settings
from infra.stores.lance import LanceVectorIndex
from infra.stores.sqlite import SqliteAnswerCache, SqliteDocumentStore
from kernel.stage import Out, Stage
from retrieval.extractive import ExtractiveAnswerer
from retrieval.retriever import RetrievalConfig, Retriever
from schemas.events import DocumentArrived, QueryRequested
from schemas.stages import PIPELINE
from schemas.topics import TOPICS
from streams import chunker, embedder
from tests.conftest import ROOT
from tests.doubles import DictCache, HashEmbedder

EXPORTER = InMemorySpanExporter()


class _Recording(SpanProcessor):
    """Hands finished spans to the exporter only while a test of this module records."""

    on = False

    def on_end(self, span: ReadableSpan) -> None:
        if self.on:
            EXPORTER.export([span])


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    processor = _Recording()
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    provider.add_span_processor(processor)
    processor.on = True
    EXPORTER.clear()
    try:
        yield EXPORTER
    finally:
        processor.on = False


class CountingEmbedder(HashEmbedder):
    def count_tokens(self, texts: Sequence[str]) -> int:
        return sum(len(t.split()) for t in texts)


def records_of(sends: list[Send], topic: str) -> list[SourceRecord]:
    return [SourceRecord(s.topic, 0, i, s.key, s.value, s.headers) for i, s in enumerate(sends) if s.topic == topic]


def run(settings: Settings, stage: Stage, records: list[SourceRecord]) -> list[Send]:
    done = BatchPolicy(settings, stage, Metrics()).process(records, lambda _: True)
    assert done is not None and done.dead_lettered == 0
    return done.sends


def by_trace(exported: Sequence[ReadableSpan]) -> dict[int, list[ReadableSpan]]:
    out: dict[int, list[ReadableSpan]] = defaultdict(list)
    for span in exported:
        assert span.context is not None
        out[span.context.trace_id].append(span)
    return out


def parent_name(span: ReadableSpan, all_spans: Sequence[ReadableSpan]) -> str | None:
    if span.parent is None:
        return None
    return next(s.name for s in all_spans if s.context is not None and s.context.span_id == span.parent.span_id)


def test_each_document_is_one_connected_trace(spans: InMemorySpanExporter, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    prefix = settings.kafka.topic_prefix
    topic = TOPICS.documents.physical(prefix)
    store, model = SqliteDocumentStore(tmp_path / "db.sqlite"), CountingEmbedder()
    index = LanceVectorIndex(tmp_path / "lance", model.dim)
    split = Chunker(load_tokenizer("all-MiniLM-L6-v2"), 16, 0)  # small chunks: two parts per document
    docs = [DocumentArrived(document_id=f"doc-{i}", title=f"Doc {i}", correlation_id=f"c-{i}",
                            text="\n\n".join(f"Paragraph {j} of document {i} about partitions." for j in range(90)))
            for i in range(2)]
    published = []
    for i, doc in enumerate(docs):  # what `ragbus ingest` does for each file
        from engine.serde import encode, headers_for

        with tracing.publishing(topic, doc) as headers:
            published.append(SourceRecord(topic, 0, i, doc.document_id.encode(), encode(doc),
                                          headers_for(doc) + headers))
    chunked = run(settings, chunker.stage(split, store.get_content), published)
    cached = embedder.CachedEmbedder(tracing.traced_embedder(model), DictCache())
    embedded = run(settings, embedder.stage(cached, 64, 0.0), records_of(chunked, TOPICS.chunks.physical(prefix)))
    indexed = run(settings, Indexer(index, store, Metrics(), model.dim).stage(64, 0.0),
                  records_of(embedded, TOPICS.embedded.physical(prefix)))
    statuses = [s for s in chunked + embedded + indexed if s.topic == TOPICS.status.physical(prefix)]
    run(settings, status_stage.stage(store, 64, 0.0), records_of(statuses, TOPICS.status.physical(prefix)))

    exported = spans.get_finished_spans()
    traces = by_trace(exported)
    doc_traces = [t for t in traces.values() if any(s.name.endswith(" publish") for s in t)]
    assert len(doc_traces) == 2
    for trace_spans in doc_traces:
        names = sorted(s.name for s in trace_spans)
        parts = names.count("embedder process")
        assert parts >= 2, names  # more than 64 chunks: the document travels in several parts
        assert names.count("chunker process") == 1 and names.count("indexer process") == parts
        assert names.count("status process") >= 3  # chunked, embedded, indexed (once per finishing part)
        publish = next(s for s in trace_spans if s.name.endswith(" publish"))
        assert publish.parent is None and publish.kind is trace.SpanKind.PRODUCER
        doc_id = publish.attributes["ragbus.document_id"]  # type: ignore[index]
        for s in trace_spans:
            if s.name != publish.name:
                assert s.attributes.get("ragbus.document_id") == doc_id, s.name  # type: ignore[union-attr]
        expected = {"chunker process": f"{topic} publish", "embedder process": "chunker process",
                    "indexer process": "embedder process"}
        for s in trace_spans:
            if s.name in expected:
                assert parent_name(s, exported) == expected[s.name]
                assert s.kind is trace.SpanKind.CONSUMER and s.attributes["ragbus.outcome"] == "ok"  # type: ignore[index]
    # the one embedding call for both documents hangs under the embedder's batch span, linked to both
    model_call = next(s for s in exported if s.name == "embeddings hash-test")
    batch = next(s for s in exported if s.name == "embedder batch")
    assert parent_name(model_call, exported) == "embedder batch"
    assert model_call.attributes["gen_ai.usage.input_tokens"] > 0  # type: ignore[index,operator]
    assert len(batch.links) == sum(1 for s in exported if s.name == "embedder process")


def test_a_query_is_one_trace_to_its_answer(spans: InMemorySpanExporter, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    topic = TOPICS.queries.physical(settings.kafka.topic_prefix)
    store, model = SqliteDocumentStore(tmp_path / "db.sqlite"), CountingEmbedder()
    index = LanceVectorIndex(tmp_path / "lance", model.dim)
    retriever = Retriever(tracing.traced_embedder(model), index, RetrievalConfig(candidates=10))
    answerer = Answerer(retriever, ExtractiveAnswerer(), store, Metrics(), lambda out: None,
                        cache=SqliteAnswerCache(tmp_path / "db.sqlite"))
    from engine.serde import encode, headers_for

    queries = [QueryRequested(text=f"question {i}?", query_id=f"q{i}") for i in range(3)]
    records = []
    for i, q in enumerate(queries):
        with tracing.publishing(topic, q) as headers:
            records.append(SourceRecord(topic, 0, i, q.query_id.encode(), encode(q), headers_for(q) + headers))
    sends = run(settings, answerer.stage(8, 0.0), records)
    exported = spans.get_finished_spans()
    for trace_spans in by_trace(exported).values():
        names = {s.name for s in trace_spans}
        if f"{topic} publish" not in names:
            continue
        assert {"answerer process", "retrieve", "embeddings hash-test"} <= names, names
        retrieve = next(s for s in trace_spans if s.name == "retrieve")
        assert parent_name(retrieve, exported) == "answerer process"  # answered in the pool, under its span
    answers = [s for s in sends if s.topic == TOPICS.answers.physical(settings.kafka.topic_prefix)]
    assert all(dict(s.headers).get("traceparent") for s in answers)


def test_a_model_call_is_a_span_with_its_token_counts(spans: InMemorySpanExporter) -> None:
    from infra.models.claude import ClaudeAnswerer
    from infra.settings import AnthropicSettings
    from kernel.ports import SearchHit
    from tests import fake_claude as fc

    fake = fc.FakeClaude(fc.message([fc.text("Partitions keep order.", [fc.cite("c1", 0, "order")])]))
    model = ClaudeAnswerer(AnthropicSettings(model="claude-haiku-4-5", fallback_model=None), fake.client())
    hit = SearchHit("c1", "d1", 1, 0, "Partitions keep order.", 0.9, "T", ())
    with tracing.span("answerer process"):
        model.answer("order?", [hit])
    chat = next(s for s in spans.get_finished_spans() if s.name == "chat claude-haiku-4-5")
    assert chat.kind is trace.SpanKind.CLIENT
    attrs = chat.attributes or {}
    assert attrs["gen_ai.usage.input_tokens"] == 100 and attrs["gen_ai.usage.output_tokens"] == 20
    assert attrs["gen_ai.request.model"] == "claude-haiku-4-5" and attrs["gen_ai.system"] == "anthropic"


def test_outputs_of_a_dead_lettered_event_keep_its_trace(spans: InMemorySpanExporter, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)

    def explode(events: Sequence[Any]) -> list[Any]:
        return [ZeroDivisionError("boom") for _ in events]

    stage = Stage(PIPELINE["chunker"], explode,
                  on_failure=lambda ev, exc: [Out(TOPICS.status, b"k", ev)])
    doc = DocumentArrived(document_id="d", text="x")
    from engine.serde import encode, headers_for

    with tracing.publishing("t", doc) as headers:
        record = SourceRecord("t", 0, 0, b"k", encode(doc), headers_for(doc) + headers)
    done = BatchPolicy(settings, stage, Metrics()).process([record], lambda _: True)
    assert done is not None and done.dead_lettered == 1
    span = next(s for s in spans.get_finished_spans() if s.name == "chunker process")
    assert span.attributes["ragbus.outcome"] == "dead_lettered"  # type: ignore[index]
    assert span.status.status_code is trace.StatusCode.ERROR and span.events[0].name == "exception"


SCRIPT = r'''
import json, sys
from engine.records import SourceRecord
from infra.ops import tracing
from infra.settings import Settings
settings = Settings()
installed = tracing.configure(settings, "ragbus-test")
parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
spans = tracing.BatchSpans("chunker", "g", [SourceRecord("t", 0, 0, b"k", b"{}", [("traceparent", parent.encode())])])
out = dict(spans.headers(0))
spans.end("ok")
if installed is not None:
    installed.shutdown()
print(json.dumps({"installed": installed is not None, "traceparent": out["traceparent"].decode()}))
'''


def _script(env: dict[str, str]) -> dict[str, Any]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=clean | env, capture_output=True, text=True,
                         timeout=120, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def test_without_an_endpoint_nothing_is_installed_and_the_context_passes_through() -> None:
    result = _script({})
    assert result == {"installed": False,
                      "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


def test_with_an_endpoint_spans_are_exported_over_otlp() -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    received: list[bytes] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = _script({"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}"})
    finally:
        server.shutdown()
        server.server_close()
    assert result["installed"] and result["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    request = ExportTraceServiceRequest.FromString(received[0])
    names = {span.name for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans}
    assert names == {"chunker batch", "chunker process"}
    service = {a.key: a.value.string_value for a in request.resource_spans[0].resource.attributes}
    assert service["service.name"] == "ragbus-test"
