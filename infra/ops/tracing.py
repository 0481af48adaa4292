"""OpenTelemetry tracing: one trace per document from `ragbus ingest` to the index, one per query from
`ragbus ask` to its answer, carried between stages by W3C `traceparent` headers on the Kafka messages.

Spans (docs/operations.md shows a trace):

- `<topic> publish` (PRODUCER): the client publishing a document, delete or query; a trace's root.
- `<stage> process` (CONSUMER), one per consumed message, a child of the span whose `traceparent`
  the message carries; the message's outputs carry this span's context, so the next stage's span
  is its child. Attributes: messaging.* (system, destination, partition, offset, key, group),
  ragbus.stage, ragbus.correlation_id, ragbus.tenant, ragbus.document_id / ragbus.query_id,
  ragbus.outcome (ok, dead_lettered, abandoned), and the error when the event failed.
- `<stage> batch` (INTERNAL), one per batch the stage handled at once, linked to every message span
  of the batch (and they to it): work done for the whole batch, such as one embedding call for 64
  documents, hangs under it.
- `embeddings <model>` (CLIENT) per embedding-model call, `chat <model>` (CLIENT) per language-model
  call, `retrieve` per hybrid search, with gen_ai.* attributes: token counts, models, finish reason.

Export: only when OTEL_EXPORTER_OTLP_ENDPOINT is set (the exporter reads the other standard OTLP
variables itself); otherwise no provider is installed, nothing is recorded, and an incoming
`traceparent` is passed on unchanged, so a stage without tracing does not cut its neighbours' traces.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import ParamSpec, Protocol, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from infra.ops.metrics import ragbus_version
from infra.settings import Settings
from kernel.ports import Embedder, Vectors

T = TypeVar("T")
P = ParamSpec("P")
Headers = list[tuple[str, str | bytes | None]]
_TRACER = "ragbus"
#: Links on one batch span at most (the SDK's own default limit is 128).
MAX_LINKS = 128
_PROPAGATED = ("traceparent", "tracestate")
#: The message spans of the batch being handled in this thread: id(event) -> (span, log fields).
_EVENTS: contextvars.ContextVar[dict[int, tuple[Span, dict[str, str]]] | None] = contextvars.ContextVar(
    "ragbus_event_spans", default=None)


def configure(settings: Settings, service: str, processor: SpanProcessor | None = None) -> TracerProvider | None:
    """Install the process's tracer provider when OTLP export is configured (or a processor is given,
    as tests do). Without one, tracing stays the API's no-op and costs next to nothing."""
    if processor is None and not settings.tracing.otlp_endpoint:
        return None
    resource = Resource.create({"service.name": settings.tracing.service_name or service,
                                "service.namespace": "ragbus", "service.version": ragbus_version(),
                                "ragbus.revision": settings.build_revision})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(processor or BatchSpanProcessor(_otlp_exporter(settings)))
    trace.set_tracer_provider(provider)
    return provider


def _otlp_exporter(settings: Settings) -> SpanExporter:
    if settings.tracing.otlp_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()


def tracer() -> trace.Tracer:
    return trace.get_tracer(_TRACER, ragbus_version())


def _text(value: str | bytes | None) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else (value or "")


def extract(headers: Headers) -> otel_context.Context:
    """The trace context a message carries (empty when it carries none)."""
    carrier = {k: _text(v) for k, v in headers if k in _PROPAGATED}
    return propagate.extract(carrier)


def inject(span: Span) -> Headers:
    """`traceparent` (and `tracestate`) headers that make the next stage's span a child of `span`."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return [(k, v.encode()) for k, v in carrier.items()]


@contextmanager
def publishing(topic: str, event: object) -> Iterator[Headers]:
    """A client publishing one event: a PRODUCER span that starts the event's trace; yields its headers."""
    with tracer().start_as_current_span(f"{topic} publish", kind=SpanKind.PRODUCER,
                                        attributes=_messaging(topic) | event_attributes(event)) as span:
        yield inject(span)


def _messaging(topic: str) -> dict[str, AttributeValue]:
    return {"messaging.system": "kafka", "messaging.destination.name": topic}


def event_attributes(event: object) -> dict[str, str]:
    """The ids an event carries (any of tenant, document_id, query_id, correlation_id), as span attributes."""
    attrs = {}
    for field in ("tenant", "document_id", "query_id", "correlation_id"):
        value = getattr(event, field, None)
        if value:
            attrs[f"ragbus.{field}"] = str(value)
    return attrs


class Consumed(Protocol):
    """What a span needs of a consumed message (engine/records.py's SourceRecord)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def headers(self) -> Headers: ...
    def correlation_id(self) -> str: ...


class BatchSpans:
    """The spans of one consumed batch: a `<stage> batch` span and a `<stage> process` span per message."""

    def __init__(self, stage: str, group: str, records: Sequence[Consumed]) -> None:
        t = tracer()
        contexts = [extract(r.headers) for r in records]
        links = [Link(sc) for ctx in contexts[:MAX_LINKS]
                 if (sc := trace.get_current_span(ctx).get_span_context()).is_valid]
        self.batch = t.start_span(f"{stage} batch", links=links, attributes={
            "ragbus.stage": stage, "messaging.batch.message_count": len(records)})
        batch_link = [Link(self.batch.get_span_context())] if self.batch.get_span_context().is_valid else []
        self.events = [t.start_span(f"{stage} process", context=ctx, kind=SpanKind.CONSUMER, links=batch_link,
                                    attributes=_messaging(r.topic) | {
                                        "messaging.operation.type": "process",
                                        "messaging.consumer.group.name": group,
                                        "messaging.destination.partition.id": str(r.partition),
                                        "messaging.kafka.offset": r.offset,
                                        "messaging.kafka.message.key": _text(r.key)[:256],
                                        "ragbus.stage": stage, "ragbus.correlation_id": r.correlation_id()})
                       for r, ctx in zip(records, contexts, strict=True)]
        self._ended = False

    def headers(self, index: int) -> Headers:
        return inject(self.events[index])

    def decoded(self, index: int, event: object) -> None:
        span = self.events[index]
        if span.is_recording():
            span.set_attributes(event_attributes(event))

    def failed(self, index: int, exc: BaseException, outcome: str = "dead_lettered") -> None:
        span = self.events[index]
        span.set_attribute("ragbus.outcome", outcome)
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:200]))

    @contextmanager
    def handling(self, pairs: Sequence[tuple[int, object, dict[str, str]]]) -> Iterator[None]:
        """While the stage handles these (index, event, log fields): `for_event` finds each one's span;
        the batch span is current, or the event's own span when it is handled alone."""
        spans = {id(event): (self.events[i], fields) for i, event, fields in pairs}
        token = _EVENTS.set(spans)
        current = self.events[pairs[0][0]] if len(pairs) == 1 else self.batch
        try:
            with trace.use_span(current, end_on_exit=False):
                yield
        finally:
            _EVENTS.reset(token)

    def end(self, outcome: str) -> None:
        if self._ended:
            return
        self._ended = True
        for span in self.events:
            if span.is_recording() and "ragbus.outcome" not in (getattr(span, "attributes", None) or {}):
                span.set_attribute("ragbus.outcome", outcome)
            span.end()
        self.batch.set_attribute("ragbus.outcome", outcome)
        self.batch.end()


def for_event(event: object, fn: Callable[P, T]) -> Callable[P, T]:
    """`fn` to run, possibly in another thread, under `event`'s message span and log fields (the
    answerer answers a batch's queries in a thread pool)."""
    from infra.ops import logs

    found = (_EVENTS.get() or {}).get(id(event))
    if found is None:
        return fn
    span, fields = found

    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        with trace.use_span(span, end_on_exit=False), logs.bound_context(**fields):
            return fn(*args, **kwargs)

    return run


@contextmanager
def span(name: str, attributes: dict[str, AttributeValue | None] | None = None,
         kind: SpanKind = SpanKind.INTERNAL) -> Iterator[Span]:
    """A child span of whatever is current (a model call, a search); exceptions are recorded on it."""
    attrs = {k: v for k, v in (attributes or {}).items() if v is not None}
    with tracer().start_as_current_span(name, kind=kind, attributes=attrs) as s:
        yield s


class TracedEmbedder:
    """An Embedder whose every call is an `embeddings <model>` span, with the input token count when the
    model can count (`count_tokens`) and the span is recorded."""

    def __init__(self, inner: Embedder) -> None:
        self._inner = inner
        self.name: str = inner.name
        self.dim: int = inner.dim

    def __getattr__(self, attr: str) -> object:  # max_tokens, count_tokens, ...: the model's own
        return getattr(self._inner, attr)

    def embed(self, texts: Sequence[str]) -> Vectors:
        with span(f"embeddings {self.name}", {"gen_ai.operation.name": "embeddings",
                                              "gen_ai.request.model": self.name,
                                              "ragbus.embed.texts": len(texts)}, kind=SpanKind.CLIENT) as s:
            count = getattr(self._inner, "count_tokens", None)
            if s.is_recording() and count is not None:
                s.set_attribute("gen_ai.usage.input_tokens", int(count(texts)))
            return self._inner.embed(texts)


def traced_embedder(inner: Embedder) -> Embedder:
    return TracedEmbedder(inner)
