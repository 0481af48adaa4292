"""Liveness of a stage: is it keeping up, or has it stalled?

A stage is *stalled* when it has lag (messages between its position and the fetch high-water mark)
and has finished nothing for `stall_after_s`. That is the symptom of faust agents that stop consuming
after some rebalances (faust-streaming #175, #532) and of a sink stuck in backoff. Lag comes from the
fetch high-water mark the client already has (Tansu answers ListOffsets(latest) wrongly).

Visible three ways: `/health` on the worker's metrics port (200 ok, 503 stalled), the
`ragbus_stage_stalled` gauge, and a small JSON file per process in `<data_dir>/health/`, which
`ragbus status` reads on one machine.
"""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from infra.ops.metrics import Metrics

#: A health file not refreshed for this long belongs to a process that is gone.
STALE_AFTER_S = 30.0


class Health:
    def __init__(self, stage: str, metrics: Metrics, directory: Path | None, stall_after_s: float = 60.0) -> None:
        self.stage = stage
        self._metrics = metrics
        self._stall_after_s = stall_after_s
        self._path = directory / f"{stage}-{os.getpid()}.json" if directory else None
        self._lock = threading.Lock()
        self.processed = 0
        self.last_progress = time.time()
        self.lag: dict[str, int] = {}
        self.crashes = 0
        self.restarts = 0
        self.last_crash: dict[str, Any] | None = None
        #: Why the stage stopped taking events (its failure breaker is open), or None.
        self.broken_reason: str | None = None

    def broken(self, reason: str) -> None:
        with self._lock:
            self.broken_reason = reason
        self._metrics.broken.labels(self.stage).set(1)
        self.write()

    def recovered(self) -> None:
        with self._lock:
            self.broken_reason = None
        self._metrics.broken.labels(self.stage).set(0)
        self.write()

    def progressed(self, n: int) -> None:
        with self._lock:
            self.processed += n
            self.last_progress = time.time()

    def crashed(self, where: str, correlation_id: str, error: BaseException) -> None:
        """An unexpected exception out of the stage's handler (the event was isolated and dead-lettered)."""
        with self._lock:
            self.crashes += 1
            self.last_crash = {"at": round(time.time(), 3), "where": where, "correlation_id": correlation_id,
                               "error": f"{type(error).__name__}: {error}"[:300]}
        self.write()

    def restarted(self) -> None:
        with self._lock:
            self.restarts += 1
        self.write()

    def set_lag(self, lag: dict[str, int]) -> None:
        with self._lock:
            self.lag = lag
        for tp, value in lag.items():
            topic, _, partition = tp.rpartition("[")
            self._metrics.lag.labels(self.stage, topic, partition.rstrip("]")).set(value)
        self._metrics.stalled.labels(self.stage).set(1 if self.stalled() else 0)
        self.write()

    def stalled(self) -> bool:
        with self._lock:
            return sum(self.lag.values()) > 0 and time.time() - self.last_progress > self._stall_after_s

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"stage": self.stage, "pid": os.getpid(), "processed": self.processed,
                    "lag": sum(self.lag.values()), "last_progress": round(self.last_progress, 3),
                    "stalled": sum(self.lag.values()) > 0 and time.time() - self.last_progress > self._stall_after_s,
                    "crashes": self.crashes, "restarts": self.restarts, "last_crash": self.last_crash,
                    "broken": self.broken_reason,
                    "updated_at": round(time.time(), 3)}

    def write(self) -> None:
        if self._path is None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.snapshot()))
        tmp.replace(self._path)

    def remove(self) -> None:
        if self._path is not None:
            self._path.unlink(missing_ok=True)


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


def serve(port: int, metrics: Metrics, healths: list[Health]) -> ThreadingHTTPServer | None:
    """/metrics (Prometheus) and /health (JSON; 503 when any stage of this process is stalled)."""
    if not port:
        return None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/metrics"):
                body, status, ctype = generate_latest(metrics.registry), 200, CONTENT_TYPE_LATEST
            elif self.path.startswith("/health"):
                snaps = [h.snapshot() for h in healths]
                state = "broken" if any(s["broken"] for s in snaps) else "stalled" if any(
                    s["stalled"] for s in snaps) else "ok"
                status = 200 if state == "ok" else 503
                body, ctype = json.dumps({"status": state, "stages": snaps}).encode(), "application/json"
            else:
                body, status, ctype = b"not found\n", 404, "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, name="ragbus-http", daemon=True).start()
    return server
