"""What every benchmark appends to its result (the machine and the date, for bench/RESULTS.md) and how it
prints one: a JSON object with --json, else one `key: value` line each."""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Any


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
