"""The failure breaker's arithmetic, on a fake clock."""

from __future__ import annotations

from infra.kafka.delivery import Breaker
from infra.settings import DeliverySettings


def test_the_breaker_opens_on_many_failures_that_dominate_the_window() -> None:
    now = [0.0]
    breaker = Breaker(DeliverySettings(breaker_window_s=60, breaker_min_failures=5, breaker_failure_ratio=0.5),
                      clock=lambda: now[0])
    assert not breaker.record(ok=100, failed=4)  # a few poison events among many good ones
    assert not breaker.record(ok=100, failed=4)  # 8 failures, but 4% of the window
    now[0] = 120.0  # the window moved on
    assert not breaker.record(ok=0, failed=4)  # 4 failures: below the count
    assert breaker.record(ok=1, failed=1)  # 5 of 6: open
    breaker.reset()
    assert not breaker.record(ok=0, failed=1)
