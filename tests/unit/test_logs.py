"""One log format for every line: ragbus's own, every library's, with message coordinates and trace ids;
a client repeating itself is rate-limited."""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from engine.delivery import BatchPolicy
from engine.records import SourceRecord, describe
from engine.serde import encode, headers_for
from infra.ops import logs
from infra.ops.metrics import Metrics
from infra.settings import Settings
from kernel.stage import PerEvent, Stage
from schemas.events import DocumentArrived
from schemas.stages import PIPELINE


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.configure("INFO", "json", stream=stream)
    try:
        yield stream
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


def parsed(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = [line for line in stream.getvalue().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line must be JSON


def test_every_library_logs_in_the_same_json(json_lines: io.StringIO) -> None:
    logs.get("ragbus.test").warning("our line", stage="embedder")
    logging.getLogger("faust.transport").warning("faust says %s", "hello")
    logging.getLogger("aiokafka.consumer").error("Unable to connect to node")
    logging.getLogger("librdkafka").error("%s [%s] %s", "FAIL", "rdkafka#consumer-1", "Connection refused")
    logging.getLogger("sentence_transformers").warning("Loading model")
    lines = parsed(json_lines)
    assert [line["logger"] for line in lines] == ["ragbus.test", "faust.transport", "aiokafka.consumer",
                                                  "librdkafka", "sentence_transformers"]
    assert all({"timestamp", "level", "event", "logger"} <= line.keys() for line in lines)
    assert lines[1]["event"] == "faust says hello"
    assert lines[3]["event"] == "FAIL [rdkafka#consumer-1] Connection refused"
    assert lines[0]["stage"] == "embedder" and lines[2]["level"] == "error"


def test_repeated_client_errors_are_rate_limited() -> None:
    clock = [0.0]
    limit = logs.RateLimit(every_s=10.0, clock=lambda: clock[0])
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(limit)
    handler.setFormatter(logging.Formatter("%(message)s %(repeated)s", defaults={"repeated": "-"}))
    rd = logging.getLogger("librdkafka.test-rate")
    rd.addHandler(handler)
    rd.propagate = False
    try:
        for i in range(100):  # ~10 a second for 10 s, as librdkafka does when its broker is gone
            clock[0] = i / 10
            rd.error("FAIL [rdkafka#consumer-1] 127.0.0.1:%d: Connection refused (after %dms in state CONNECT)",
                     9092, i)
        clock[0] = 10.5
        rd.error("FAIL [rdkafka#consumer-1] 127.0.0.1:9092: Connection refused (after 1ms in state CONNECT)")
        rd.error("a different error")
        rd.setLevel(logging.INFO)
        rd.info("infos are never limited")
    finally:
        rd.removeHandler(handler)
    out = stream.getvalue().splitlines()
    assert len(out) == 4, out
    assert out[0].endswith(" -") and out[1].endswith(" 99") and out[2] == "a different error -"
    assert out[3] == "infos are never limited -"


def test_our_own_lines_are_not_rate_limited(json_lines: io.StringIO) -> None:
    for i in range(20):
        logs.get("engine.delivery").warning("dead-lettered", where=f"t[0]@{i}")
    assert len(parsed(json_lines)) == 20


def test_lines_about_a_message_carry_where_and_correlation_id(json_lines: io.StringIO) -> None:
    """Every line logged while one event is handled, by the policy, the stage or a library it calls."""
    library = logging.getLogger("lancedb")

    def handle(events: Sequence[Any]) -> list[PerEvent]:
        if len(events) > 1:
            raise KeyError("fails as a batch")  # the policy then runs the events one by one
        library.warning("a library line about the write")
        if events[0].document_id == "bad":
            raise ZeroDivisionError("this one")
        return [[] for _ in events]

    stage = Stage(PIPELINE["chunker"], handle, max_batch=2)
    policy = BatchPolicy(Settings(), stage, Metrics())
    records = [SourceRecord("ragbus.documents.v1", 1, 40 + i, b"k", encode(ev), headers_for(ev))
               for i, ev in enumerate([DocumentArrived(document_id="good", text="x", correlation_id="c-good"),
                                       DocumentArrived(document_id="bad", text="x", correlation_id="c-bad")])]
    done = policy.process(records, lambda _: True)
    assert done is not None and done.dead_lettered == 1
    lines = parsed(json_lines)
    assert all(line.get("stage") == "chunker" and line.get("batch") == "ragbus.documents.v1[1]@40..41"
               for line in lines)
    library_lines = [line for line in lines if line["logger"] == "lancedb"]
    assert [(line["where"], line["correlation_id"]) for line in library_lines] == [
        ("ragbus.documents.v1[1]@40", "c-good"), ("ragbus.documents.v1[1]@41", "c-bad")]
    about_bad = [line for line in lines if line["event"] in ("dead-lettered", "stage raised an unexpected error on "
                                                                               "an event; dead-lettering it")]
    assert len(about_bad) == 2 and all(line["where"] == "ragbus.documents.v1[1]@41"
                                       and line["correlation_id"] == "c-bad" for line in about_bad)
    crash = next(line for line in about_bad if line["event"].startswith("stage raised"))
    assert 'raise ZeroDivisionError("this one")' in crash["exception"]  # the traceback: where the bug is


class _Raw(logging.Handler):
    """librdkafka's WARNING+ lines as the client logged them, before the root handler's rate limit."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_a_dead_broker_does_not_flood_the_log(json_lines: io.StringIO) -> None:
    """A confluent-kafka consumer whose broker is gone: librdkafka logs a line per reconnect attempt (here every
    50-100 ms). Once it has logged ten, each distinct line (digits aside) was written exactly once: the rest are
    held back for CLIENT_REPEAT_S (10 s, longer than this test runs)."""
    from engine.broker import free_port
    from engine.clients import make_consumer

    raw = _Raw()
    logging.getLogger("librdkafka").addHandler(raw)
    settings = Settings(kafka={"bootstrap_servers": f"127.0.0.1:{free_port()}"})  # type: ignore[arg-type]
    consumer = make_consumer(settings, "rate-test", **{"reconnect.backoff.ms": 50, "reconnect.backoff.max.ms": 100})
    started = time.monotonic()
    try:
        while len(raw.lines) < 10 and time.monotonic() - started < 8:
            consumer.poll(0.1)
    finally:
        consumer.close()
        logging.getLogger("librdkafka").removeHandler(raw)
    assert len(raw.lines) >= 10, raw.lines
    assert time.monotonic() - started < logs.CLIENT_REPEAT_S, "too slow to tell a limit from a quiet client"
    written = [line["event"] for line in parsed(json_lines)
               if line["logger"] == "librdkafka" and line["level"] in ("warning", "error", "critical")]
    distinct = {re.sub(r"\d+", "#", line) for line in raw.lines}
    assert sorted(re.sub(r"\d+", "#", line) for line in written) == sorted(distinct), (written, raw.lines)


def test_a_line_inside_a_span_carries_its_trace_id(json_lines: io.StringIO) -> None:
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, use_span

    ctx = SpanContext(trace_id=0x1234, span_id=0x56, is_remote=True, trace_flags=TraceFlags(1))
    with use_span(NonRecordingSpan(ctx)):
        logs.get("ragbus.test").info("inside")
        logging.getLogger("faust").warning("inside too")
    lines = parsed(json_lines)
    assert {(line["trace_id"], line["span_id"]) for line in lines} == {(f"{0x1234:032x}", f"{0x56:016x}")}


def test_a_batch_is_named_by_offset_ranges_per_partition() -> None:
    """describe() names a batch through logs.where, one range per partition, the topic said once."""
    records = [SourceRecord(topic, p, o, None, None, []) for topic, p, o in
               (("t", 0, 7), ("t", 0, 5), ("t", 2, 3), ("t", 0, 9), ("u", 1, 4))]
    assert describe(records) == "t[0]@5..9 [2]@3 u[1]@4"
    assert describe([]) == "" and logs.where("t", 0, "5..9") == "t[0]@5..9"
