"""A running stack over time, sampled from outside: memory per stage process, disk, index layout, progress.

    python bench/stack_sampler.py DATA_DIR UP_LOG [--every 30] [--tenant-prefix T] > samples.jsonl

DATA_DIR is the stack's data directory (`RAGBUS_DATA_DIR`) and UP_LOG the output of its `ragbus up`, whose
"stage process started" lines name each process's pid. Every `--every` seconds one JSON line: time, resident MB
and CPU seconds so far per process (and the local broker's), the data directory's size (index, document store),
documents per status in the document store, the index's rows and how many parts its vector and text indexes have.
Read-only: the document store is opened read-only, the index only read.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any


def pids(up_log: Path) -> dict[str, int]:
    found: dict[str, int] = {}
    for line in up_log.read_text(errors="replace").splitlines():
        m = re.search(r"stage process started.*pid=(\d+) stages=(\S+)", line)
        if m:
            found[m.group(2)] = int(m.group(1))
    return found


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of the process so far (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)


def broker_pid() -> int | None:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if b"--storage-engine" in (proc / "cmdline").read_bytes():
                    return int(proc.name)
            except OSError:
                continue
    return None


def size_mb(path: Path) -> float:
    if not path.exists():
        return 0.0
    total = 0
    for p in [path] if path.is_file() else path.rglob("*"):
        try:
            total += p.stat().st_size if p.is_file() else 0
        except FileNotFoundError:  # a temporary file the index's upkeep removed meanwhile
            continue
    return round(total / 2**20, 1)


def index_layout(lance_dir: Path) -> dict[str, Any]:
    import lancedb

    try:
        table = lancedb.connect(str(lance_dir)).open_table("chunks")
    except Exception as exc:  # not created yet
        return {"error": str(exc)[:100]}
    out: dict[str, Any] = {"rows": table.count_rows()}
    for name in ("vector_idx", "text_idx"):
        stats = table.index_stats(name)
        out[name] = None if stats is None else {"parts": stats.num_indices, "unindexed": stats.num_unindexed_rows}
    return out


def statuses(db: Path) -> dict[str, int]:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        return dict(conn.execute("SELECT status, COUNT(*) FROM documents GROUP BY status").fetchall())
    except sqlite3.Error as exc:
        return {"error": str(exc)[:100]}  # type: ignore[dict-item]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("up_log", type=Path)
    ap.add_argument("--every", type=float, default=30.0)
    args = ap.parse_args()
    started = time.time()
    while True:
        procs = pids(args.up_log)
        broker = broker_pid()
        sample = {
            "t": round(time.time() - started, 1), "at": time.strftime("%H:%M:%S"), "unix": round(time.time(), 1),
            "rss_mb": {name: rss_mb(pid) for name, pid in procs.items()} | {"broker": broker and rss_mb(broker)},
            "cpu_s": {name: cpu_s(pid) for name, pid in procs.items()} | {"broker": broker and cpu_s(broker)},
            "disk_mb": {"lance": size_mb(args.data_dir / "lance"), "sqlite": size_mb(args.data_dir / "ragbus.sqlite"),
                        "total": size_mb(args.data_dir)},
            "documents": statuses(args.data_dir / "ragbus.sqlite"),
            "index": index_layout(args.data_dir / "lance"),
        }
        print(json.dumps(sample), flush=True)
        time.sleep(args.every)


if __name__ == "__main__":
    sys.exit(main())
