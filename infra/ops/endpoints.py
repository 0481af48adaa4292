"""The HTTP endpoints of a stage process: /metrics (Prometheus), /health (the state of every stage in the
process as JSON, infra/ops/health.py), /livez and /readyz (for orchestrators' probes)."""

from __future__ import annotations

import errno
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from infra.ops.health import UNHEALTHY, Health, overall
from infra.ops.metrics import Metrics
from kernel.errors import ConfigurationError


def serve(host: str, port: int, metrics: Metrics, healths: list[Health]) -> ThreadingHTTPServer | None:
    """/metrics (Prometheus), /health (JSON; 503 when a stage is stalled or broken), /livez, /readyz.
    A port in use is a ConfigurationError naming the setting."""
    if not port:
        return None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            status, ctype = 200, "application/json"
            if path == "/metrics":
                body, ctype = generate_latest(metrics.registry), CONTENT_TYPE_LATEST
            elif path == "/health":
                snaps = [h.snapshot() for h in healths]
                state = overall(snaps)
                status = 503 if state in UNHEALTHY else 200
                body = json.dumps({"status": state, "stages": snaps}).encode()
            elif path in ("/livez", "/readyz"):
                failing = [h.stage for h in healths if not (h.live() if path == "/livez" else h.ready())]
                status = 503 if failing else 200
                body = json.dumps({"ok": not failing, "failing": failing}).encode()
            else:
                body, status, ctype = b"not found\n", 404, "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigurationError(f"RAGBUS_METRICS_PORT={port} is already in use on {host}: choose a free "
                                     "port (each worker needs its own) or stop the process that holds it") from exc
        raise ConfigurationError(f"cannot serve metrics on RAGBUS_METRICS_HOST={host} port {port}: "
                                 f"{exc.strerror or exc}") from exc
    threading.Thread(target=server.serve_forever, name="ragbus-http", daemon=True).start()
    return server
