"""A faust stage's batch in slices, smallest documents first (engine.delivery.slices): a short document is not
held behind a long one, and per-key order is kept."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.delivery import slices
from engine.records import SourceRecord


def rec(offset: int, key: str | None, size: int) -> SourceRecord:
    return SourceRecord("t", 0, offset, None if key is None else key.encode(), b"x" * size, [])


def test_a_short_document_behind_a_long_one_goes_first_in_a_slice_of_its_own() -> None:
    batch = [rec(0, "long", 60_000), rec(1, "long", 60_000), rec(2, "long", 60_000), rec(3, "short", 500)]
    got = slices(batch, 100_000)
    assert [[r.offset for r in s] for s in got] == [[3, 0], [1], [2]]


def test_no_budget_is_the_batch_as_it_came() -> None:
    batch = [rec(0, "a", 10), rec(1, "b", 5)]
    assert slices(batch, 0) == [batch]


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", None]), st.integers(0, 5000)), max_size=40),
       st.integers(1, 12_000))
def test_every_record_once_per_key_order_kept_and_the_budget_held(items: list[tuple[str | None, int]],
                                                                 budget: int) -> None:
    batch = [rec(n, key, size) for n, (key, size) in enumerate(items)]
    got = slices(batch, budget)
    flat = [r for s in got for r in s]
    assert sorted(r.offset for r in flat) == list(range(len(batch)))
    for key in ("a", "b", "c"):
        offsets = [r.offset for r in flat if r.key == key.encode()]
        assert offsets == sorted(offsets)
    for s in got:
        assert len(s) == 1 or sum(len(r.value or b"") for r in s) <= budget
