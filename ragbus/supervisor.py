"""`ragbus up`: everything on one machine, in the foreground.

Starts the local broker when no Kafka is configured (and records its address in the data directory),
creates the topics, and runs every stage as its own process (`ragbus worker ...`), exactly as they run
when scaled out. A stage process that dies is restarted with backoff. SIGINT/SIGTERM stops the stages
first (each finishes or abandons its batch uncommitted, then leaves its group), then the broker.

A local broker that dies ends `ragbus up` too (BrokerLost): it kept topics, offsets and the events in
flight in memory, so a restarted one would know none of them; `ragbus up` says so in one line, records it
in the data directory (`ragbus status` and every client repeat it) and exits non-zero.

Crash loops end: a stage process that exits with an error within FAST_FAILURE_S of starting has failed
at start-up (bad configuration, a port in use, a broker it cannot reach). After MAX_FAST_FAILURES such
failures in a row, restarting is pointless: `ragbus up` stops everything and exits non-zero with the
stage's own error line from its log, so an operator (or Kubernetes) sees the cause. Processes killed
by a signal (an OOM kill, a chaos test) never count: they are restarted as before.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.broker import LocalBroker, lost
from engine.clients import check_reachable, ensure_topics
from infra.ops import logs
from infra.settings import LOCAL_FETCH_WAIT_MS, Settings
from kernel.errors import ConfigurationError, RagbusError
from schemas.stages import PIPELINE

log = logs.get(__name__)

#: Process layout of `ragbus up`, as the stage declarations group them: faust stages alone; the light sinks share
#: one process.
PROCESSES: tuple[tuple[str, ...], ...] = PIPELINE.processes()
LOCAL_SESSION_TIMEOUT_MS = "2000"
STOP_GRACE_S = 30.0
#: A stage process that exits with an error sooner than this after starting failed at start-up.
FAST_FAILURE_S = 30.0
#: Fast failures in a row after which `ragbus up` gives up and exits with the stage's error.
MAX_FAST_FAILURES = 5


class StageFailed(RagbusError):
    """A stage kept failing at start-up; the message carries its own error."""


class BrokerLost(RagbusError):
    """The local broker died: what was in flight is gone with it (it keeps everything in memory)."""


#: With the broker gone no stage can commit or hand over anything: they get this long to stop, then SIGKILL.
LOST_BROKER_GRACE_S = 5.0


@dataclass
class _Child:
    stages: tuple[str, ...]
    #: Its name among the stack's processes: the stages, and `#n` for the n-th copy of the same stages.
    label: str = ""
    proc: subprocess.Popen[bytes] | None = None
    #: Scaled in: stopped on purpose, not restarted.
    retired: bool = False
    restarts: int = 0
    next_start: float = 0.0
    log_path: str = ""
    started_at: float = field(default=0.0)
    fast_failures: int = 0


def _provision_stores(settings: Settings, env: dict[str, str]) -> None:
    """Create store schemas and indexes once, before several stage processes open them."""
    from infra.models.embedder import embedding_dim

    from . import wiring

    wiring.build_store(settings).close()
    if settings.embedder.backend == "onnx":
        from infra.models.onnx_embedder import exported_dir

        if not (exported_dir(settings.embedder, settings.onnx_dir()) / "meta.json").exists():
            # once, before the stages load it; in a child process, so torch never stays resident here
            log.info("exporting the embedding model to ONNX (once)", to=str(settings.onnx_dir()))
            subprocess.run([sys.executable, "-m", "ragbus.cli", "embedder", "export"], env=env, check=True,
                           stdout=subprocess.DEVNULL)
    wiring.build_index(settings, embedding_dim(settings.embedder.model)).close()


class Stack:
    """The running stack: broker (maybe), topics, stage processes."""

    def __init__(self, settings: Settings, processes: tuple[tuple[str, ...], ...] = PROCESSES,
                 max_restart_delay_s: float = 30.0, worker_command: tuple[str, ...] | None = None) -> None:
        self._max_restart_delay_s = max_restart_delay_s
        #: How a stage process is started; the chaos harness wraps it to inject faults.
        self._worker_command = worker_command or (sys.executable, "-m", "ragbus.cli", "worker")
        self._settings = settings
        self._broker: LocalBroker | None = None
        self._children: list[_Child] = []
        for stages in processes:
            self._add_child(stages)
        self._env = dict(os.environ)
        self._stopping = threading.Event()
        self.bootstrap = ""
        #: Set when a stage failed at start-up MAX_FAST_FAILURES times in a row, or the local broker died.
        self.failure: StageFailed | BrokerLost | None = None

    def _add_child(self, stages: tuple[str, ...]) -> _Child:
        copies = sum(1 for c in self._children if c.stages == stages)
        child = _Child(stages, ",".join(stages) + (f"#{copies + 1}" if copies else ""))
        self._children.append(child)
        return child

    def scale(self, stages: tuple[str, ...], n: int) -> None:
        """Run `n` processes of `stages` from now on: start new ones, or stop (SIGTERM: each finishes or
        abandons its batch uncommitted and leaves the group) and retire the last ones."""
        running = [c for c in self._children if c.stages == stages and not c.retired]
        for _ in range(n - len(running)):
            self._spawn(self._add_child(stages))
        for child in running[n:] if n < len(running) else []:
            child.retired = True
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
            log.info("stage process scaled in", stages=child.label)

    def start(self) -> Stack:
        self._check_ports()
        data = self._settings.data_dir
        data.mkdir(parents=True, exist_ok=True)
        if self._settings.kafka.bootstrap_servers:
            self.bootstrap = self._settings.kafka.bootstrap_servers
        else:
            self._broker = LocalBroker(data / "logs" / "broker.log").start()
            self._broker.record_in(self._settings.broker_file())
            self.bootstrap = self._broker.bootstrap
            self._env.setdefault("RAGBUS_KAFKA_SESSION_TIMEOUT_MS", LOCAL_SESSION_TIMEOUT_MS)
            # the children are given the broker's address explicitly, so tell them it is the local one
            self._env.setdefault("RAGBUS_KAFKA_FETCH_WAIT_MAX_MS", str(LOCAL_FETCH_WAIT_MS))
            log.info("local broker started", bootstrap=self.bootstrap, note="memory-only storage")
        self._env["RAGBUS_KAFKA_BOOTSTRAP_SERVERS"] = self.bootstrap
        self._env["RAGBUS_DATA_DIR"] = str(data.resolve())
        settings = self.child_settings()
        check_reachable(settings)
        created = ensure_topics(settings)
        log.info("topics ready", created=len(created))
        _provision_stores(settings, self._env)
        for child in self._children:
            self._spawn(child)
        threading.Thread(target=self._supervise, name="ragbus-supervisor", daemon=True).start()
        return self

    def _supervise(self) -> None:
        while not self._stopping.wait(0.5):
            if self._broker is not None and self._broker.exit_code() is not None:
                self._broker_lost(self._broker)
                return
            self.supervise_once()

    def _broker_lost(self, broker: LocalBroker) -> None:
        """The local broker died under the stages: say so plainly and stop, instead of every client retrying
        a broker that, restarted, would not know the topics, offsets or events any more."""
        broker.record_lost(self._settings.broker_file())
        why = lost(self._settings.broker_file()) or "the local broker is gone"
        self.failure = BrokerLost(why)
        log.error("local broker lost; stopping the stages", reason=why)
        self._stopping.set()

    def _check_ports(self) -> None:
        """Every stage process's metrics port is free: one line now rather than a crash loop later."""
        if not self._settings.metrics_port:
            return
        host = self._settings.metrics_host
        for i in range(len(self._children)):
            port = self._settings.metrics_port + i
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((host, port))
                except OSError as exc:
                    what = "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc})"
                    raise ConfigurationError(
                        f"RAGBUS_METRICS_PORT={self._settings.metrics_port}: port {port} on {host} {what}; the "
                        f"{len(self._children)} stage processes use ports {self._settings.metrics_port}.."
                        f"{self._settings.metrics_port + len(self._children) - 1}: choose a free range") from exc

    def child_settings(self) -> Settings:
        """Settings as the stage processes see them (after the broker address is known)."""
        saved = dict(os.environ)
        try:
            os.environ.update(self._env)
            return Settings()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def _spawn(self, child: _Child) -> None:
        logdir = self._settings.data_dir / "logs"
        logdir.mkdir(parents=True, exist_ok=True)
        path = logdir / f"{child.label.replace(',', '-').replace('#', '.')}.log"
        out = path.open("ab")
        env = dict(self._env)
        if self._settings.metrics_port:  # one /metrics + /health port per process: base, base+1, ...
            env["RAGBUS_METRICS_PORT"] = str(self._settings.metrics_port + self._children.index(child))
        child.proc = subprocess.Popen([*self._worker_command, *child.stages], env=env,
                                      stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        child.log_path, child.started_at = str(path), time.monotonic()
        log.info("stage process started", stages=",".join(child.stages), pid=child.proc.pid, log=str(path))

    def supervise_once(self) -> None:
        """Restart dead stage processes (exponential backoff, reset after a minute of health); give up on
        one that keeps failing at start-up."""
        now = time.monotonic()
        for child in self._children:
            if child.proc is None or child.proc.poll() is None or self._stopping.is_set() or child.retired:
                if child.proc is not None and child.proc.poll() is None and now - child.started_at > 60:
                    child.restarts = 0
                continue
            if child.next_start == 0.0:
                code = child.proc.returncode
                fast = code > 0 and now - child.started_at < FAST_FAILURE_S
                child.fast_failures = child.fast_failures + 1 if fast else 0
                if child.fast_failures >= MAX_FAST_FAILURES:
                    self._give_up(child, code)
                    return
                delay = min(self._max_restart_delay_s, 0.5 * 2 ** child.restarts)
                child.next_start = now + delay
                log.warning("stage process exited; restarting", stages=",".join(child.stages),
                            code=child.proc.returncode, delay_s=delay, log=child.log_path)
            elif now >= child.next_start:
                child.restarts += 1
                child.next_start = 0.0
                self._spawn(child)

    def _give_up(self, child: _Child, code: int) -> None:
        name = ",".join(child.stages)
        self.failure = StageFailed(
            f"stage {name} failed {child.fast_failures} times in a row within {FAST_FAILURE_S:.0f}s of starting "
            f"(exit code {code}); its error: {last_error(Path(child.log_path))} (log: {child.log_path})")
        log.error("stage keeps failing at start-up; stopping", stages=name, code=code, log=child.log_path)
        self._stopping.set()

    def pids(self) -> dict[str, int]:
        """Running stage processes by label (e.g. "indexer,status", "embedder#2"): for operators and the chaos
        harness."""
        return {c.label: c.proc.pid for c in self._children
                if c.proc is not None and c.proc.poll() is None and not c.retired}

    def run_forever(self) -> None:
        """Until SIGINT/SIGTERM, or until a stage keeps failing at start-up (then StageFailed)."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self._stopping.set())
        self._stopping.wait()
        if self.failure is not None:
            raise self.failure

    def stop(self) -> None:
        self._stopping.set()
        for child in self._children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        broker_lost = isinstance(self.failure, BrokerLost)
        deadline = time.monotonic() + (LOST_BROKER_GRACE_S if broker_lost else STOP_GRACE_S)
        for child in self._children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("stage did not stop in time; killing", stages=child.label)
                child.proc.kill()
                child.proc.wait()
        if self._broker is not None:
            self._broker.stop()
            if not broker_lost:  # a lost broker stays recorded, so `ragbus status` and clients can say so
                self._settings.broker_file().unlink(missing_ok=True)
            log.info("local broker stopped")

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def last_error(path: Path, tail_bytes: int = 65536) -> str:
    """The stage's own error from the end of its log: the CLI's one-line error, else the last ERROR or
    CRITICAL line (JSON or console), else the last line of a traceback."""
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - tail_bytes))
            lines = [line.strip() for line in fh.read().decode("utf-8", "replace").splitlines() if line.strip()]
    except OSError as exc:
        return f"(log unreadable: {exc})"
    for line in reversed(lines):
        if line.startswith("ragbus: "):
            return line.removeprefix("ragbus: ").removeprefix("error: ")
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if data.get("level") in ("error", "critical"):
                return " ".join(str(data[k]) for k in ("event", "error", "reason") if data.get(k))[:500]
        elif " [error" in line or " [critical" in line:
            return line[:500]
    for line in reversed(lines):
        if not line.startswith(("File ", "^", "Traceback", "During handling", "The above exception")):
            return line[:500]
    return "(no output)"
