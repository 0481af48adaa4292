"""engine/faust_seam.py against the installed faust-streaming and aiokafka: every private name it relies on is
there with the shape it uses, and each reach does what ragbus needs, on real faust and aiokafka objects, without a
broker. A faust or aiokafka upgrade that moves one fails here by name. (With a broker, lag and readiness from
faust's internals: tests/integration/test_faust_runtime.py.)"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import aiokafka
import aiokafka.consumer.consumer as aiokafka_consumer
import pytest
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP

from engine import faust_seam
from kernel.errors import ConfigurationError

T = TypeVar("T")


def with_app_in_loop(tmp_path: Path, check: Callable[[faust_seam.FaustApp], T]) -> T:
    """`check(app)` on a faust app built as the faust runner builds it (call it inside a running event loop)."""
    app = faust_seam.FaustApp("seam-test", broker="kafka://127.0.0.1:9", store="memory://", web_enabled=False,
                              datadir=str(tmp_path))
    app.fetch_wait_ms = 7
    return check(app)


def with_app(tmp_path: Path, check: Callable[[faust_seam.FaustApp], T]) -> T:
    async def run() -> T:
        return with_app_in_loop(tmp_path, check)

    return asyncio.run(run())


def test_everything_the_seam_relies_on_is_there(tmp_path: Path) -> None:
    assert with_app(tmp_path, faust_seam.missing) == []
    with_app(tmp_path, faust_seam.verify)


def test_a_moved_internal_is_named_and_stops_a_faust_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(aiokafka_driver.AIOKafkaConsumerThread, "_ensure_consumer")

    def create(self: Any, transport: Any, loop: Any) -> Any:
        raise AssertionError("never called")

    monkeypatch.setattr(aiokafka_driver.AIOKafkaConsumerThread, "_create_worker_consumer", create)
    assert with_app(tmp_path, faust_seam.missing) == [
        "AIOKafkaConsumerThread._create_worker_consumer now takes ('self', 'transport', 'loop'), not "
        "('self', 'transport')",
        "faust.transport.drivers.aiokafka.AIOKafkaConsumerThread._ensure_consumer is gone"]
    with pytest.raises(ConfigurationError, match="changed what ragbus relies on .*update engine/faust_seam.py"):
        with_app(tmp_path, faust_seam.verify)


def test_the_worker_consumer_fetches_with_the_apps_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """faust builds the consumer through the overridden hooks, and aiokafka's `start` hands the wait to the fetcher
    it builds (stopped there: no broker)."""
    seen: dict[str, Any] = {}

    class Stop(Exception):
        pass

    def fetcher(*args: Any, **kwargs: Any) -> None:
        seen.update(kwargs)
        raise Stop

    async def nothing(*args: Any) -> None:
        return None

    monkeypatch.setattr(aiokafka_consumer, "Fetcher", fetcher)

    def check(app: faust_seam.FaustApp) -> Any:
        thread = app.consumer._thread  # type: ignore[attr-defined]
        assert type(thread).__name__ == "_ConsumerThread", "faust no longer builds its consumer through the hooks"
        consumer = thread._create_worker_consumer(app.transport)
        assert isinstance(consumer, aiokafka.AIOKafkaConsumer)
        monkeypatch.setattr(consumer._client, "bootstrap", nothing)
        monkeypatch.setattr(consumer, "_wait_topics", nothing)
        return consumer

    async def start() -> None:
        consumer = with_app_in_loop(tmp_path, check)
        with pytest.raises(Stop):
            await consumer.start()
        consumer._closed = True  # never connected: nothing to close

    asyncio.run(start())
    assert seen["fetch_max_wait_ms"] == 7


class Connection:
    def __init__(self, up: bool) -> None:
        self.up = up

    def connected(self) -> bool:
        return self.up


def test_connection_state_and_committed_offsets_are_read_from_faust_and_aiokafka(tmp_path: Path) -> None:
    def check(app: faust_seam.FaustApp) -> list[object]:
        tp = TP("ragbus.chunks.v1", 0)
        states: list[object] = [faust_seam.broker_connected(app), faust_seam.committed_offset(app, tp)]
        thread = app.consumer._thread  # type: ignore[attr-defined]
        thread._consumer = consumer = thread._create_worker_consumer(app.transport)
        states.append(faust_seam.broker_connected(app))
        consumer._client._conns[("node", 0)] = Connection(False)
        consumer._client._conns[("node", 1)] = Connection(True)
        states.append(faust_seam.broker_connected(app))
        app.consumer._committed_offset[tp] = 41  # type: ignore[attr-defined]  # what faust's commit records
        states.append(faust_seam.committed_offset(app, tp))
        consumer._closed = True
        return states

    assert with_app(tmp_path, check) == [(False, "consumer not started"), None, (False, "no broker connection is up"),
                                         (True, None), 41]


def test_leaving_unacknowledged_runs_no_clean_up() -> None:
    """faust commits acknowledged offsets on every orderly way out; this way runs none (atexit here)."""
    code = ("import atexit; atexit.register(print, 'clean-up ran'); "
            "from engine.faust_seam import leave_unacknowledged; print('leaving', flush=True); "
            "leave_unacknowledged(70)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 70 and done.stdout == "leaving\n", done.stderr
