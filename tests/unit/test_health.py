"""Health on a scripted clock: the two false alarms of the old `/health` (an idle stage receiving work, a
batch slower than a fixed 60 s) are not stalls; a partition whose committed offset stops moving is."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from engine.broker import free_port
from infra.ops.endpoints import serve
from infra.ops.health import Health, StallPolicy
from infra.ops.metrics import Metrics
from kernel.errors import ConfigurationError

TP = ("ragbus.chunks.v1", 0)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def healthy(policy: StallPolicy | None = None) -> tuple[Health, Clock, Metrics]:
    clock, metrics = Clock(), Metrics()
    health = Health("embedder", metrics, None, policy or StallPolicy(min_s=60.0, factor=3.0), clock=clock)
    health.assigned([TP])
    return health, clock, metrics


def gauge(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"stage": "embedder", **labels})


def run_batch(health: Health, clock: Clock, seconds: float, committed: int, high: int) -> None:
    """A batch that takes `seconds`, sampled every 2 s as the runners do, then commits up to `committed`."""
    health.batch_started()
    for _ in range(int(seconds // 2)):
        clock.advance(2)
        health.observe({TP: (committed - 1 if committed else 0, high)})
        assert not health.stalled(), f"stalled {clock.now} inside a {seconds}s batch"
    clock.advance(seconds % 2)
    health.batch_ended()
    health.progressed(1, seconds)
    health.observe({TP: (committed, high)})


def test_an_idle_stage_is_not_stalled_when_work_arrives() -> None:
    # The first false alarm: idle for an hour (the committed offset has not moved all that time), then
    # a document arrives; the old check called that a stall at once.
    health, clock, _ = healthy()
    health.observe({TP: (10, 10)})
    for _ in range(1800):
        clock.advance(2)
        health.observe({TP: (10, 10)})
    clock.advance(2)
    health.observe({TP: (10, 11)})  # work arrives
    assert not health.stalled() and health.state() == "ok"
    run_batch(health, clock, 12, committed=11, high=11)  # seen 12 s into a normal ingest
    assert not health.stalled()


def test_a_batch_slower_than_a_fixed_bound_is_not_a_stall() -> None:
    # The second false alarm: embedding batches of ~48 s on a busy machine, then one of 75 s; a fixed
    # 60-second bound called it a stall. The bound now follows the stage's own batches.
    health, clock, metrics = healthy()
    offset = 0
    for _ in range(5):
        offset += 64
        run_batch(health, clock, 48, committed=offset, high=offset + 200)
    assert health.stall_bound() == 144.0
    assert gauge(metrics, "ragbus_stage_stall_bound_seconds") == 144.0
    run_batch(health, clock, 75, committed=offset + 64, high=offset + 200)
    assert not health.stalled()


def test_a_hung_sink_is_a_stall_within_the_bound() -> None:
    health, clock, metrics = healthy()
    for i in range(3):
        run_batch(health, clock, 10, committed=10 * (i + 1), high=100)
    bound = health.stall_bound()
    assert bound == 60.0  # max(min 60 s, 3 x 10 s)
    health.batch_started()  # the sink never returns
    stalled_after = None
    for step in range(1, 100):
        clock.advance(2)
        health.observe({TP: (30, 100)})
        if health.stalled():
            stalled_after = 2 * step
            break
    assert stalled_after is not None and bound < stalled_after <= bound + 2
    snap = health.snapshot()
    assert snap["state"] == "stalled" and snap["stuck_s"] > bound and snap["live"]
    assert gauge(metrics, "ragbus_stage_stalled") == 1
    health.batch_ended()  # the sink came back and the batch committed
    health.observe({TP: (40, 100)})
    assert health.state() == "ok" and gauge(metrics, "ragbus_stage_stalled") == 0


def test_a_fixed_bound_overrides_the_derived_one() -> None:
    health, clock, _ = healthy(StallPolicy(fixed_s=5.0))
    health.observe({TP: (0, 3)})
    clock.advance(4)
    health.observe({TP: (0, 3)})
    assert not health.stalled()
    clock.advance(2)
    assert health.stalled() and health.state() == "stalled"


def test_progress_on_any_partition_is_progress() -> None:
    # Under a backlog a consumer serves its partitions in turn: one waits while the others move.
    health, clock, _ = healthy(StallPolicy(fixed_s=5.0))
    other = ("ragbus.chunks.v1", 1)
    health.assigned([TP, other])
    health.observe({TP: (0, 10), other: (0, 10)})
    for step in range(1, 10):
        clock.advance(2)
        health.observe({TP: (0, 10), other: (step, 10)})
        assert not health.stalled()
    assert health.snapshot()["partitions"]["ragbus.chunks.v1[0]"]["stuck_s"] == 18.0
    clock.advance(6)
    assert health.stalled()  # nothing moved anywhere for 6 s


def test_broken_wins_over_stalled_and_lag_labels_go_with_the_partition() -> None:
    health, clock, metrics = healthy(StallPolicy(fixed_s=1.0))
    health.observe({TP: (0, 3)})
    clock.advance(2)
    health.broken("configuration: bad key")
    assert health.state() == "broken"
    assert gauge(metrics, "ragbus_consumer_lag", topic="ragbus.chunks.v1", partition="0") == 3
    health.revoked()
    assert gauge(metrics, "ragbus_consumer_lag", topic="ragbus.chunks.v1", partition="0") is None
    assert not health.ready()


def test_liveness_is_the_loop_turning_and_a_batch_in_progress_counts() -> None:
    health, clock, _ = healthy(StallPolicy(liveness_timeout_s=30))
    clock.advance(20)
    assert health.live()
    clock.advance(20)
    assert not health.live()  # nothing turned for 40 s
    health.tick()
    assert health.live()
    health.batch_started()
    clock.advance(600)
    assert health.live()  # a long batch is the stall detector's business, not a reason to restart
    health.batch_ended()
    assert health.live()


def test_readiness_is_connected_and_assigned() -> None:
    clock, metrics = Clock(), Metrics()
    health = Health("indexer", metrics, None, clock=clock)
    assert not health.ready() and health.state() == "starting"
    health.assigned([])  # more members than partitions: ready with nothing to do
    assert health.ready() and health.state() == "ok"
    assert metrics.registry.get_sample_value("ragbus_stage_ready", {"stage": "indexer"}) == 1
    health.connection(False, "all brokers down")
    assert not health.ready() and health.state() == "disconnected"
    assert health.snapshot()["connection_error"] == "all brokers down"
    health.connection(True)
    assert health.ready()


@pytest.fixture
def endpoints() -> Iterator[tuple[str, Health, Clock]]:
    clock, metrics = Clock(), Metrics(stages=["embedder"])
    health = Health("embedder", metrics, None, StallPolicy(fixed_s=5.0, liveness_timeout_s=30), clock=clock)
    port = free_port()
    server = serve("127.0.0.1", port, metrics, [health])
    assert server is not None
    try:
        yield f"http://127.0.0.1:{port}", health, clock
    finally:
        server.shutdown()
        server.server_close()


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = resp.read()
            code = resp.status
    except urllib.error.HTTPError as err:
        body, code = err.read(), err.code
    try:
        return code, json.loads(body)
    except ValueError:
        return code, body.decode()


def test_endpoints_answer_each_question(endpoints: tuple[str, Health, Clock]) -> None:
    url, health, clock = endpoints
    assert get(f"{url}/readyz")[0] == 503 and get(f"{url}/livez")[0] == 200
    code, body = get(f"{url}/health")
    assert code == 200 and body["status"] == "starting" and [s["stage"] for s in body["stages"]] == ["embedder"]
    health.assigned([TP])
    health.observe({TP: (0, 4)})
    assert get(f"{url}/readyz")[0] == 200 and get(f"{url}/health")[1]["status"] == "ok"
    clock.advance(6)
    code, body = get(f"{url}/health")
    assert code == 503 and body["status"] == "stalled"
    assert body["stages"][0]["partitions"]["ragbus.chunks.v1[0]"]["lag"] == 4
    assert get(f"{url}/readyz")[0] == 200  # a stalled stage is still connected and assigned
    clock.advance(30)
    assert get(f"{url}/livez") == (503, {"ok": False, "failing": ["embedder"]})
    metrics_text = get(f"{url}/metrics")[1]
    assert 'ragbus_consumer_lag{partition="0",stage="embedder",topic="ragbus.chunks.v1"} 4.0' in metrics_text
    assert "ragbus_build_info{" in metrics_text and "ragbus_llm_cost_usd_total" not in metrics_text
    assert get(f"{url}/nothing")[0] == 404


def test_a_used_port_is_one_error_naming_the_setting() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(ConfigurationError, match=f"RAGBUS_METRICS_PORT={port} is already in use"):
            serve("127.0.0.1", port, Metrics(), [])
    with pytest.raises(ConfigurationError, match="RAGBUS_METRICS_HOST=192.0.2.1"):
        serve("192.0.2.1", free_port(), Metrics(), [])  # an address this machine does not have


def test_endpoints_bind_loopback_unless_told_otherwise(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from infra.settings import Settings

    monkeypatch.delenv("RAGBUS_METRICS_HOST", raising=False)
    assert Settings().metrics_host == "127.0.0.1"
    server = serve(Settings().metrics_host, free_port(), Metrics(), [])
    assert server is not None
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.shutdown()
        server.server_close()
