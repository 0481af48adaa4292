"""The health file: what a stage process says about itself (infra/ops/health.py), as a small JSON file per
process in `<data_dir>/health/`, written by the process and read by `ragbus status` on the same machine.

The writer refreshes it on every change of state and every 2 s from a thread of its own (`report`), so a
stage stuck in a batch still reports (stalled) instead of going quiet; the reader skips files not refreshed
for STALE_AFTER_S, whose process is gone.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from infra.ops import logs

log = logs.get(__name__)
#: A health file not refreshed for this long belongs to a process that is gone.
STALE_AFTER_S = 30.0


class HealthFile:
    """One stage process's health file, replaced whole on every write."""

    def __init__(self, path: Path, stage: str) -> None:
        self.path = path
        self._stage = stage
        self._write_error: str | None = None

    def write(self, snapshot: dict[str, Any]) -> None:
        """A full or vanished data directory must not end the stage (it is often the very fault the file should
        report): the failure is logged once per distinct error, and `/health` still answers from memory."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(snapshot))
            tmp.replace(self.path)
        except OSError as exc:
            if str(exc) != self._write_error:
                log.warning("cannot write the health file; /health still answers", stage=self._stage,
                            path=str(self.path), error=str(exc)[:200])
            self._write_error = str(exc)
        else:
            self._write_error = None

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class Reporting(Protocol):
    """What `report` refreshes: a stage's health, which writes its own file."""

    def write(self) -> None: ...


def report(healths: Sequence[Reporting], every_s: float = 2.0) -> threading.Event:
    """Refresh the health files every `every_s` from a thread of their own, so a stage stuck in a batch
    still reports (stalled) instead of going quiet. Set the returned event to stop."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every_s):
            for h in healths:
                h.write()

    threading.Thread(target=loop, name="ragbus-health", daemon=True).start()
    return stop


def read_health(directory: Path) -> list[dict[str, Any]]:
    """Health of the stage processes on this machine that are still reporting."""
    out = []
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if time.time() - float(data.get("updated_at", 0)) <= STALE_AFTER_S:
            out.append(data)
    return out
