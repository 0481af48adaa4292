"""Structured logs: one format for every line a process writes, ragbus's own and every library's.

structlog renders, the standard library carries: ragbus's structlog loggers hand their event dicts to
`logging`, and one handler on the root logger renders them and every library's records (faust, mode,
aiokafka, librdkafka through confluent-kafka's `logger`, sentence-transformers, lancedb, warnings)
with the same processors: JSON lines with RAGBUS_LOG_FORMAT=json, readable key=value lines otherwise.

Fields (docs/operations.md lists them all): `timestamp`, `level`, `logger`, `event`; `stage`;
`where` (`topic[partition]@offset`) and `correlation_id` on every line about one message, `batch` on
lines about a batch (bound with `bound_context` by the delivery policy, so a library's line logged
while a message is handled carries them too); `trace_id` and `span_id` when a span is current;
`repeated` on a client line that stood for others suppressed by the rate limit.

Client libraries repeat themselves when a broker is gone (librdkafka logs a line per reconnect
attempt, ~10 a second): WARNING and above from the client loggers are rate-limited per distinct
message (digits ignored), one line per `CLIENT_REPEAT_S`, carrying the count it stood for.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, cast

import structlog
from opentelemetry import trace
from structlog.typing import EventDict, Processor, WrappedLogger

#: Loggers whose repeated WARNING+ lines are rate-limited (the Kafka clients and their runtimes).
CLIENT_LOGGERS = ("librdkafka", "aiokafka", "kafka", "faust", "mode", "engine.client")
#: At most one line per distinct client message in this many seconds.
CLIENT_REPEAT_S = 10.0
_NOISY = ("faust", "mode", "aiokafka", "httpx", "httpx2", "lancedb", "sentence_transformers", "urllib3",
          "huggingface_hub", "transformers", "opentelemetry")
_DIGITS = re.compile(r"\d+")


class RateLimit(logging.Filter):
    """Lets one line per distinct client message through every `every_s`; the next one carries `repeated`."""

    def __init__(self, prefixes: tuple[str, ...] = CLIENT_LOGGERS, every_s: float = CLIENT_REPEAT_S,
                 clock: Callable[[], float] = time.monotonic, keep: int = 1000) -> None:
        super().__init__()
        self._prefixes = prefixes
        self._every_s = every_s
        self._clock = clock
        self._keep = keep
        self._seen: OrderedDict[tuple[str, int, str], list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(self._prefixes):
            return True
        key = (record.name, record.levelno, _DIGITS.sub("#", _text(record))[:200])
        now = self._clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self._every_s:
                seen[1] += 1
                return False
            self._seen[key] = [now, 0.0]
            self._seen.move_to_end(key)
            while len(self._seen) > self._keep:
                self._seen.popitem(last=False)
        if seen is not None and seen[1]:
            _add_field(record, "repeated", int(seen[1]))
        return True


def _text(record: logging.LogRecord) -> str:
    if isinstance(record.msg, dict):  # a structlog event dict
        return str(record.msg.get("event", "")) + str(record.msg.get("error", ""))
    try:
        return record.getMessage()
    except Exception:  # a library's bad format arguments must not lose the line
        return str(record.msg)


def _add_field(record: logging.LogRecord, key: str, value: object) -> None:
    if isinstance(record.msg, dict):
        record.msg = {**record.msg, key: value}
    else:
        setattr(record, key, value)


def add_trace_ids(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """`trace_id` and `span_id` of the current span, so a log line leads to its trace."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event.setdefault("trace_id", format(ctx.trace_id, "032x"))
        event.setdefault("span_id", format(ctx.span_id, "016x"))
    return event


def _shared() -> list[Processor]:
    return [structlog.contextvars.merge_contextvars, structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name, structlog.processors.TimeStamper(fmt="iso", utc=True),
            add_trace_ids]


def configure(level: str = "INFO", fmt: str = "console", quiet_clients: bool = False,
              stream: IO[str] | None = None) -> logging.Handler:
    """Route every logger of the process through one handler. `quiet_clients`: for interactive
    commands, whose client failures are reported as one line instead. Returns the handler (tests)."""
    renderer: Processor = (structlog.processors.JSONRenderer() if fmt == "json"
                     else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *_shared(), structlog.processors.StackInfoRenderer(),
                    structlog.processors.format_exc_info, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.stdlib.BoundLogger,
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_shared(), structlog.stdlib.ExtraAdder(allow=["repeated"]),
                           structlog.stdlib.PositionalArgumentsFormatter()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(RateLimit())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    numeric = logging.getLevelName(level.upper())
    root.setLevel(numeric)
    logging.captureWarnings(True)
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, numeric))
    logging.getLogger("librdkafka").setLevel(logging.CRITICAL if quiet_clients else numeric)
    return handler


@contextmanager
def bound_context(**fields: object) -> Iterator[None]:
    """Fields on every line logged in this thread meanwhile (ragbus's and the libraries')."""
    tokens = structlog.contextvars.bind_contextvars(**{k: v for k, v in fields.items() if v is not None})
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)


def where(topic: str, partition: int, offset: int | str | None = None) -> str:
    """`topic[partition]`, or `topic[partition]@offset`: how logs, health and the CLI name a message's place.
    `offset` may be a range (`5..9`), for a batch."""
    return f"{topic}[{partition}]" if offset is None else f"{topic}[{partition}]@{offset}"


def get(name: str) -> structlog.stdlib.BoundLogger:
    return cast(structlog.stdlib.BoundLogger, structlog.get_logger(name))
