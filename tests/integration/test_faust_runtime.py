"""The faust runtime never acknowledges an event it did not finish: an unexpected exception in a batch is
pinned on its event, a stop in the middle of a batch finishes it (or leaves it for redelivery), and a
broken runner exits without acknowledging. Driven through tests/stage_harness.py in its own process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine.clients import EventProducer, ensure_topics
from infra.ops.health_file import read_health
from infra.settings import Settings
from schemas.events import DocumentArrived
from schemas.stages import PIPELINE
from schemas.topics import TOPICS, document_key
from tests.conftest import ROOT

from .helpers import headers, read_all, wait_until

pytestmark = pytest.mark.broker


def harness(settings: Settings, fault: str, **env_extra: str) -> subprocess.Popen[str]:
    env = dict(os.environ) | {
        "RAGBUS_KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers or "",
        "RAGBUS_KAFKA_TOPIC_PREFIX": settings.kafka.topic_prefix, "RAGBUS_DATA_DIR": str(settings.data_dir),
        "RAGBUS_KAFKA_SESSION_TIMEOUT_MS": "2000", "RAGBUS_TEST_FAULT": fault} | env_extra
    return subprocess.Popen([sys.executable, "-m", "tests.stage_harness"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def publish(settings: Settings, ids: list[str]) -> None:
    producer = EventProducer(settings)
    for i in ids:
        producer.send(TOPICS.documents, document_key("default", i), DocumentArrived(document_id=i, text="x"))
    producer.flush()


def handled(settings: Settings, expect: int) -> list[str]:
    return [json.loads(m.value())["document_id"] for m in read_all(settings, TOPICS.status, expect, 5)]


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    return out


def test_an_unexpected_exception_in_a_batch_is_pinned_on_its_event(broker: str, settings_factory) -> None:  # type: ignore[no-untyped-def]
    settings = settings_factory(broker)
    ensure_topics(settings)
    ids = [f"doc-{i}" for i in range(30)]
    ids[5], ids[17] = "explode-1", "explode-2"
    publish(settings, ids)
    proc = harness(settings, "unexpected")
    try:
        wait_until(lambda: len(set(handled(settings, 28))) == 28, 60, "every good event of the batches")
        dead = read_all(settings, PIPELINE["chunker"].dead_letters, 2, 10)
        assert proc.poll() is None, "the stage died"
    finally:
        out = stop(proc)
    assert sorted(set(handled(settings, 28))) == sorted(i for i in ids if not i.startswith("explode"))
    assert sorted(m.key() for m in dead) == [b"default/explode-1", b"default/explode-2"]
    assert {headers(m)["ragbus-dlq-error-type"] for m in dead} == {"RecursionError"}
    assert "maximum recursion depth" in headers(dead[0])["ragbus-dlq-reason"]
    assert "stage raised an unexpected error on an event" in out
    # each crash is logged once, with its traceback (where the bug is); faust's agent itself never crashed
    assert out.count("stage raised an unexpected error on an event") == 2 and "Traceback" in out
    assert "Crashed" not in out


def test_a_stop_in_the_middle_of_a_batch_loses_nothing(broker: str, settings_factory) -> None:  # type: ignore[no-untyped-def]
    settings = settings_factory(broker)
    ensure_topics(settings)
    ids = [f"doc-{i}" for i in range(48)]
    publish(settings, ids)
    proc = harness(settings, "slow")
    wait_until(lambda: len(handled(settings, 1)) >= 1, 60, "the first batch")
    out = stop(proc)  # lands in the middle of a 2-second batch
    first = set(handled(settings, len(ids)))
    assert len(first) < len(ids), "the stream should still have been in flight"
    assert proc.returncode == 0, out[-3000:]
    proc = harness(settings, "")
    try:
        wait_until(lambda: set(handled(settings, len(ids))) == set(ids), 60, "every event after the restart")
    finally:
        stop(proc)


def test_a_broken_runner_exits_without_acknowledging_its_batch(broker: str, settings_factory) -> None:  # type: ignore[no-untyped-def]
    settings = settings_factory(broker)
    ensure_topics(settings)
    ids = [f"doc-{i}" for i in range(20)] + ["bug-1"] + [f"late-{i}" for i in range(20)]
    publish(settings, ids)
    proc = harness(settings, "runner-bug")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 70, out[-3000:]
    assert "exiting without acknowledging it" in out
    assert "bug-1" not in handled(settings, len(ids))
    proc = harness(settings, "")  # the fixed release: resumes from the committed offset
    try:
        wait_until(lambda: set(handled(settings, len(ids))) == set(ids), 60, "the redelivered batch")
    finally:
        stop(proc)


def test_a_faust_stage_that_fails_on_everything_holds_its_events_until_fixed(broker: str, settings_factory,  # type: ignore[no-untyped-def]
                                                                              tmp_path: Path) -> None:
    settings = settings_factory(broker, RAGBUS_DELIVERY_PROBE_INTERVAL_S="0.5")
    ensure_topics(settings)
    ids = [f"doc-{i}" for i in range(20)]
    publish(settings, ids)
    fixed = tmp_path / "fixed"
    proc = harness(settings, "broken-release", RAGBUS_TEST_FIXED=str(fixed))
    try:
        wait_until(lambda: any(h.get("broken") for h in read_health(settings.health_dir())), 60,
                   "the stage to report itself broken")
        assert "a bug in this release" in next(h["broken"] for h in read_health(settings.health_dir()))
        assert handled(settings, 1) == [] and read_all(settings, PIPELINE["chunker"].dead_letters, 1, 2) == []
        fixed.touch()  # the fix is deployed (the probe sees it)
        wait_until(lambda: set(handled(settings, len(ids))) == set(ids), 60, "every event after the fix")
        assert read_all(settings, PIPELINE["chunker"].dead_letters, 1, 2) == []
        assert not any(h.get("broken") for h in read_health(settings.health_dir()))
    finally:
        out = stop(proc)
    assert "stage broken: holding its events uncommitted" in out and "stage recovered" in out


def test_a_faust_stage_logs_one_json_object_per_line(broker: str, settings_factory) -> None:  # type: ignore[no-untyped-def]
    """RAGBUS_LOG_FORMAT=json holds in a real faust worker: every line on its output is one JSON object
    (libraries' lines included; faust's terminal spinner once wrote cursor codes), and a line about an
    event names it."""
    settings = settings_factory(broker)
    ensure_topics(settings)
    ids = ["doc-1", "explode-1", "doc-2"]
    publish(settings, ids)
    proc = harness(settings, "unexpected", RAGBUS_LOG_FORMAT="json", RAGBUS_LOG_LEVEL="DEBUG")
    try:
        wait_until(lambda: len(set(handled(settings, 2))) == 2, 60, "the good events")
        read_all(settings, PIPELINE["chunker"].dead_letters, 1, 10)
    finally:
        out = stop(proc)
    lines = [line for line in out.splitlines() if line.strip()]
    not_json = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            not_json.append(line)
    assert not not_json, not_json[:5]
    records = [json.loads(line) for line in lines]
    # faust, mode and aiokafka log at WARNING and above only (infra/ops/logs.py); at DEBUG asyncio speaks
    assert {r.get("logger", "").split(".")[0] for r in records} - {"infra", "tests"}, \
        "no library line at all: is the test seeing the worker's output?"
    crash = next(r for r in records if r.get("event", "").startswith("stage raised an unexpected error"))
    assert crash["where"].startswith(f"{settings.kafka.topic_prefix}documents.v1[")


def test_a_faust_stage_reports_readiness_and_lag_from_faust(broker: str, settings_factory) -> None:  # type: ignore[no-untyped-def]
    """What engine/faust_seam.py reads from faust and aiokafka, against a broker: the broker connection
    (readiness) and the committed offsets (lag 0 once every event is handled, on every partition that had one)."""
    settings = settings_factory(broker)
    ensure_topics(settings)
    publish(settings, [f"doc-{i}" for i in range(20)])
    proc = harness(settings, "")

    def caught_up() -> bool:
        snaps = read_health(settings.health_dir())
        parts = snaps[0]["partitions"] if snaps else {}
        return bool(parts) and snaps[0]["ready"] and all(p["lag"] == 0 for p in parts.values())

    try:
        wait_until(lambda: len(set(handled(settings, 20))) == 20, 60, "every event handled")
        wait_until(caught_up, 30, "the stage to report itself ready with no lag")
        [snap] = read_health(settings.health_dir())
    finally:
        stop(proc)
    assert snap["state"] == "ok" and snap["connection_error"] is None
    assert sum(p["committed"] for p in snap["partitions"].values()) == 20, snap["partitions"]
