"""A disk that refuses writes (here a file-size limit, RLIMIT_FSIZE, in a child process: the same errno path
as a full disk) makes the embedded stores' writes transient, not errors of the events being written; once
space returns the same writes go through. Classified by errno, never by the message of LanceDB's error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

CHILD = r"""
import json, resource, signal, sys
from pathlib import Path
import numpy as np
from infra.stores.lance import LanceVectorIndex
from infra.stores.sqlite import SqliteDocumentStore
from kernel.ports import ChunkRecord

data = Path(sys.argv[1])
index, store = LanceVectorIndex(data / "lance", 4), SqliteDocumentStore(data / "db.sqlite")

def rec(i):
    return ChunkRecord(f"c{i}", "t", "d", 1, i, "words " * 200, np.ones(4, dtype=np.float32), "T", (), "", {})

def attempt(write):
    try:
        write()
        return "ok"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"

index.upsert([rec(0)])
store.upsert_chunks([rec(0)])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the default action kills; a full disk only fails the write
resource.setrlimit(resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))  # "the disk is full"
full = {"lance": attempt(lambda: index.upsert([rec(i) for i in range(1, 40)])),
        "lance delete": attempt(lambda: index.delete_versions("t", "d", below=2)),  # removes c0: a real write
        "sqlite": attempt(lambda: store.upsert_chunks([rec(i) for i in range(1, 40)]))}
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))  # space returns
back = {"lance": attempt(lambda: index.upsert([rec(i) for i in range(1, 40)])),
        "sqlite": attempt(lambda: store.upsert_chunks([rec(i) for i in range(1, 40)]))}
print(json.dumps({"full": full, "back": back, "rows": [index.count(), store.count_chunks()]}))
"""


def test_a_full_disk_is_transient_for_lancedb_and_sqlite_and_writes_resume(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    for what in ("lance", "lance delete"):
        assert got["full"][what].startswith("RetryableError: "), got["full"]
        assert "EFBIG" in got["full"][what]  # the errno the disk answered, in the reason
    assert got["full"]["sqlite"].startswith("RetryableError: sqlite: SQLITE_"), got["full"]
    assert got["back"] == {"lance": "ok", "sqlite": "ok"}
    assert got["rows"] == [40, 40]


def test_a_disk_that_takes_writes_or_a_fault_that_is_not_the_disk_is_not_called_full(tmp_path: Path) -> None:
    from infra.stores.disk import trouble

    assert trouble(tmp_path) is None  # a healthy disk (the test machines have far more than 64 MiB free)
    assert trouble(tmp_path / "missing") is None  # ENOENT: not the disk's fault, the write's error surfaces
    assert list(tmp_path.iterdir()) == []  # the probe leaves nothing behind
