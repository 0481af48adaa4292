from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from engine.clients import EventProducer, make_consumer, partition_ids, topic_name
from engine.consumer_runner import ConsumerRunner
from engine.delivery import BatchPolicy
from infra.ops.health import Health
from infra.ops.metrics import Metrics
from infra.settings import Settings
from kernel.stage import Stage
from schemas.topics import TopicSpec


def read_all(settings: Settings, spec: TopicSpec, expect: int, timeout_s: float = 30.0) -> list[Any]:
    """Every message of a topic from the start, until `expect` arrived or the time is up."""
    consumer: Consumer = make_consumer(settings, None)
    name = topic_name(settings, spec)
    consumer.assign([TopicPartition(name, p, 0) for p in partition_ids(consumer, name)])
    got: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < expect and time.monotonic() < deadline:
            got.extend(m for m in consumer.consume(500, 0.2) if m.error() is None)
        # a little longer, to see anything unexpected beyond `expect`
        got.extend(m for m in consumer.consume(500, 0.5) if m.error() is None)
    finally:
        consumer.close()
    return got


def runner_for(settings: Settings, stage: Stage, metrics: Metrics | None = None,
               health: Health | None = None) -> ConsumerRunner:
    """A consumer runner for `stage`, with the delivery policy every stage gets."""
    metrics = metrics or Metrics()
    return ConsumerRunner(settings, BatchPolicy(settings, stage, metrics, health), EventProducer(settings), health)


def wait_until(check: Callable[[], bool], timeout_s: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def headers(msg: Any) -> dict[str, str]:
    return {k: v.decode() for k, v in (msg.headers() or [])}


def cli(settings: Settings, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`ragbus ARGS` as a user runs it against the stack of `settings` (only its bootstrap and data directory)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGBUS_")} | {
        "RAGBUS_KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers or "",
        "RAGBUS_DATA_DIR": str(settings.data_dir), "RAGBUS_KAFKA_SESSION_TIMEOUT_MS": "2000"}
    return subprocess.run([sys.executable, "-m", "ragbus.cli", *args], cwd=cwd or Path(__file__).parents[2], env=env,
                          capture_output=True, text=True, timeout=300)

