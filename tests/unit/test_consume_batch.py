"""How consumer stages and clients take a batch: a lone message at once, a burst as one batch."""

from __future__ import annotations

from typing import Any

from engine.clients import consume_batch


class ScriptedConsumer:
    """Answers `consume(n, timeout)` from a queue of already-fetched messages plus ones that 'arrive' later."""

    def __init__(self, queued: list[str], arriving: list[str]) -> None:
        self.queued, self.arriving = list(queued), list(arriving)
        self.calls: list[tuple[int, float]] = []

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        self.calls.append((num_messages, timeout))
        if not self.queued and timeout > 0 and self.arriving:
            self.queued.append(self.arriving.pop(0))  # one arrives while we block
        taken, self.queued = self.queued[:num_messages], self.queued[num_messages:]
        return taken


def test_a_lone_message_is_handed_over_without_waiting_for_a_batch() -> None:
    consumer = ScriptedConsumer([], ["q1"])
    assert consume_batch(consumer, 256, 0.5) == ["q1"]  # type: ignore[arg-type]
    # never asked for a full batch with a timeout, which would wait the whole timeout for one message
    assert all(n == 1 or t == 0 for n, t in consumer.calls)


def test_what_is_already_there_comes_as_one_batch_up_to_the_limit() -> None:
    consumer = ScriptedConsumer([f"m{i}" for i in range(10)], [])
    assert consume_batch(consumer, 4, 0.5) == ["m0", "m1", "m2", "m3"]  # type: ignore[arg-type]
    assert consume_batch(consumer, 100, 0.5) == [f"m{i}" for i in range(4, 10)]  # type: ignore[arg-type]
    assert consume_batch(consumer, 100, 0.5) == []  # type: ignore[arg-type]


def test_a_linger_lets_a_thin_stream_fill_the_batch() -> None:
    consumer = ScriptedConsumer([], ["a", "b"])
    assert consume_batch(consumer, 8, 0.5, linger_s=0.1) == ["a", "b"]  # type: ignore[arg-type]
    assert consumer.calls[-1] == (7, 0.1)
