"""What every benchmark appends to its result (the machine and the date, for bench/RESULTS.md), how it prints
one (a JSON object with --json, else one `key: value` line each), and how a benchmark runs the CLI against its
stack as an operator would (`ragbus`)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from infra.settings import Settings


def run_facts() -> dict[str, str]:
    return {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "date": time.strftime("%Y-%m-%d")}


def emit(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
        return
    width = max(map(len, result), default=0)
    for key, value in result.items():
        print(f"{key:>{width}}: {value}")


def ragbus(settings: Settings, *args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    """`ragbus ARGS...` against the stack `settings` point at (its broker and data directory, nothing else from
    this environment's RAGBUS_ variables), as an operator runs it; exits with its error output when it fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGBUS_")} | {
        "RAGBUS_KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers or "",
        "RAGBUS_DATA_DIR": str(settings.data_dir), "RAGBUS_LOG_LEVEL": "WARNING"}
    done = subprocess.run([sys.executable, "-m", "ragbus.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"ragbus {' '.join(args)} failed: {done.stderr.strip()[-800:]}")
    return done
