"""The local broker frozen and killed under `ragbus up` (a real `ragbus up` process, its stage processes and
its Tansu broker):

- frozen with SIGSTOP (to every client exactly a network partition) while documents are in flight, then
  resumed with SIGCONT: the stages and the CLI recover without a restart, nothing is lost or duplicated, and
  `ragbus status` answers meanwhile instead of hanging;
- killed outright: the memory-only broker took the events in flight with it; `ragbus up` says so in one
  line and exits, and `ragbus status` says so plainly.

The freeze is 8 s here; `pytest -m slow` freezes it for 20 s.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.ops.health_file import read_health
from infra.stores.lance import LanceVectorIndex
from infra.stores.sqlite import SqliteDocumentStore
from schemas.events import Status
from tests.conftest import ONNX_CACHE, ROOT

from .helpers import wait_until

pytestmark = pytest.mark.broker


def env_for(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGBUS_") and "ANTHROPIC" not in k}
    return env | {"RAGBUS_DATA_DIR": str(data), "RAGBUS_EMBEDDER_ONNX_DIR": str(ONNX_CACHE),
                  "RAGBUS_LOG_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1"}


def ragbus(data: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ragbus.cli", *args], cwd=ROOT, env=env_for(data),
                          capture_output=True, text=True, timeout=timeout)


def documents(root: Path, name: str, n: int) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"{name}{i}.md").write_text(f"# {name} {i}\n\n" + " ".join(
            f"Section {i}.{j} of {name}: partitions keep the order of one document's events." for j in range(30)))
    return folder


@pytest.fixture
def up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    data = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-m", "ragbus.cli", "up"], cwd=ROOT, env=env_for(data), text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: (data / "broker.json").exists() and len(read_health(data / "health")) >= 5, 120,
                   "ragbus up to start its broker and stages")
        yield proc, data
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def assert_indexed_once(data: Path, ids: list[str]) -> None:
    store = SqliteDocumentStore(data / "ragbus.sqlite")
    index = LanceVectorIndex(data / "lance", 384)
    for doc_id in ids:
        d = store.get_document("default", doc_id)
        assert d is not None and d.status is Status.INDEXED, (doc_id, d)
        in_store, in_index = store.chunk_versions("default", doc_id), index.chunk_versions("default", doc_id)
        assert len(in_store) == d.chunks and len({c for c, _ in in_store}) == d.chunks, doc_id  # no duplicates
        assert {c for c, _ in in_store} <= {c for c, _ in in_index}, doc_id


@pytest.mark.parametrize("freeze_s", [8, pytest.param(20, marks=pytest.mark.slow)], ids=["8s", "20s"])
def test_a_frozen_broker_then_a_dead_one_under_ragbus_up(up: tuple[subprocess.Popen[str], Path], tmp_path: Path,
                                                         freeze_s: float) -> None:
    proc, data = up
    broker_pid = json.loads((data / "broker.json").read_text())["pid"]
    first = ragbus(data, "ingest", str(documents(tmp_path, "a", 3)), "--wait", "--idle-timeout", "120")
    assert first.returncode == 0, first.stderr
    stages = {(h["stage"], h["pid"]) for h in read_health(data / "health")}

    # frozen with documents in flight: to every client, a partition
    in_flight = ragbus(data, "ingest", str(documents(tmp_path, "b", 3)))
    assert in_flight.returncode == 0, in_flight.stderr
    os.kill(broker_pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        during = ragbus(data, "status", timeout=60)  # answers, from the stores, instead of hanging
        assert time.monotonic() - started < 30 and "documents:" in during.stdout, during.stdout + during.stderr
        time.sleep(max(0.0, freeze_s - (time.monotonic() - started)))
    finally:
        os.kill(broker_pid, signal.SIGCONT)
    after = ragbus(data, "ingest", str(documents(tmp_path, "c", 3)), "--wait", "--idle-timeout", "120")
    assert after.returncode == 0, after.stderr
    ids = [f"{n}/{n}{i}.md" for n in "abc" for i in range(3)]
    wait_until(lambda: all((d := SqliteDocumentStore(data / "ragbus.sqlite").get_document("default", i)) is not None
                           and d.status is Status.INDEXED for i in ids), 120, "every document indexed")
    assert_indexed_once(data, ids)
    assert {(h["stage"], h["pid"]) for h in read_health(data / "health")} == stages  # no stage restarted
    assert proc.poll() is None

    # killed: what was in flight is gone, and ragbus up says so instead of running on against nothing
    os.kill(broker_pid, signal.SIGKILL)
    proc.wait(60)
    err = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode != 0
    assert f"the local broker (pid {broker_pid}) exited" in err and "events in flight were lost" in err, err[-3000:]
    status = ragbus(data, "status", timeout=60)
    assert status.returncode == 3
    assert "broker: LOST" in status.stdout and "events in flight were lost" in status.stdout, status.stdout
    assert "indexed 9" in status.stdout  # what the stores hold is still reported
