"""Structured logs: readable in a terminal, JSON in production (RAGBUS_LOG_FORMAT=json)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def configure(level: str = "INFO", fmt: str = "console", quiet_clients: bool = False) -> None:
    """`quiet_clients`: for interactive commands, whose failures are reported as one line instead."""
    renderer: Any = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(
        colors=False)
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    for noisy in ("faust", "mode", "aiokafka", "httpx", "httpx2", "lancedb", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))
    if quiet_clients:
        logging.getLogger("librdkafka").setLevel(logging.CRITICAL)


def get(name: str) -> Any:
    return structlog.get_logger(name)
