"""`ragbus up` ends a crash loop: a stage that keeps failing at start-up stops the stack with its own error;
processes killed by a signal, and failures after a healthy run, are restarted as before."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from infra.settings import Settings
from kernel.errors import ConfigurationError
from ragbus import supervisor
from ragbus.supervisor import MAX_FAST_FAILURES, Stack, StageFailed, last_error


class FakeProc:
    def __init__(self, code: int) -> None:
        self.returncode = code
        self.pid = 4242

    def poll(self) -> int:
        return self.returncode


def stack_with(tmp_path: Path, codes: list[int], lived_s: float, monkeypatch: pytest.MonkeyPatch) -> Stack:
    """A stack whose one child exits with `codes` in turn after `lived_s` seconds each."""
    stack = Stack(Settings(data_dir=tmp_path), processes=(("chunker",),))
    log = tmp_path / "chunker.log"
    log.write_text("INFO starting\nragbus: error: RAGBUS_KAFKA_CLIENT_CONFIG sets ssl.crl.location, which the "
                   "faust stages cannot honour\n")
    clock = [1000.0]
    monkeypatch.setattr(supervisor.time, "monotonic", lambda: clock[0])

    def spawn(child: Any) -> None:
        child.proc = FakeProc(codes.pop(0)) if codes else None
        child.log_path, child.started_at = str(log), clock[0]

    monkeypatch.setattr(stack, "_spawn", spawn)
    spawn(stack._children[0])
    stack._clock = clock  # type: ignore[attr-defined]
    stack._lived = lived_s  # type: ignore[attr-defined]
    return stack


def supervise(stack: Stack, rounds: int) -> None:
    clock = stack._clock  # type: ignore[attr-defined]
    for _ in range(rounds):
        clock[0] += stack._lived  # type: ignore[attr-defined]
        stack.supervise_once()  # notices the exit, schedules the restart
        clock[0] += 60
        stack.supervise_once()  # restarts
        if stack.failure is not None:
            return


def test_fast_failures_end_the_loop_with_the_stage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = stack_with(tmp_path, [2] * 10, lived_s=3, monkeypatch=monkeypatch)
    supervise(stack, 10)
    assert stack.failure is not None and stack._stopping.is_set()
    message = str(stack.failure)
    assert f"failed {MAX_FAST_FAILURES} times in a row" in message and "exit code 2" in message
    assert "RAGBUS_KAFKA_CLIENT_CONFIG sets ssl.crl.location" in message
    with pytest.raises(StageFailed):
        stack.run_forever()


@pytest.mark.parametrize(("codes", "lived_s"), [([-9] * 10, 3.0), ([1] * 10, 120.0), ([0] * 10, 3.0)])
def test_signals_slow_failures_and_clean_exits_are_restarted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             codes: list[int], lived_s: float) -> None:
    stack = stack_with(tmp_path, codes, lived_s=lived_s, monkeypatch=monkeypatch)
    supervise(stack, 8)
    assert stack.failure is None and not stack._stopping.is_set()


def test_the_stage_error_is_found_in_its_log(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text('{"event": "stage started", "level": "info"}\n'
                   '{"event": "cannot reach the model", "level": "error", "error": "FileNotFoundError: /m"}\n'
                   '{"event": "bye", "level": "info"}\n')
    assert last_error(log) == "cannot reach the model FileNotFoundError: /m"
    log.write_text("Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
                   "KeyError: 'RAGBUS'\n")
    assert last_error(log) == "KeyError: 'RAGBUS'"
    assert "unreadable" in last_error(tmp_path / "missing.log")


def test_a_metrics_port_in_use_is_one_line_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        stack = Stack(Settings(data_dir=tmp_path, metrics_port=port - 1))
        with pytest.raises(ConfigurationError, match=f"RAGBUS_METRICS_PORT={port - 1}: port {port} on 127.0.0.1 "
                                                     "is already in use"):
            stack.start()
    assert not (tmp_path / "broker.json").exists()


@pytest.mark.broker
def test_ragbus_up_gives_up_on_a_stage_that_cannot_start(tmp_path: Path, broker: str) -> None:
    """Through the real supervisor loop: each start of the 'stage' fails at once with a one-line error."""
    fail = (sys.executable, "-c", "import sys; print('ragbus: error: RAGBUS_X=1 is not a model directory', "
                                  "file=sys.stderr); sys.exit(2)")
    settings = Settings(data_dir=tmp_path, kafka={"bootstrap_servers": broker,  # type: ignore[arg-type]
                                                  "topic_prefix": "up-crash."})
    stack = Stack(settings, processes=(("status",),), worker_command=fail, max_restart_delay_s=0.5)
    with stack, pytest.raises(StageFailed, match="RAGBUS_X=1 is not a model directory"):
        stack.run_forever()
