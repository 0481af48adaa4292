"""`ragbus ask` prints exactly the final answer, streamed or not, and the client loses no delta."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

from ragbus.client import collect_answers
from ragbus.render import StreamView
from schemas.events import AnswerDelta, AnswerGenerated, Citation

QID = "q1"
PIECES = ["Order is kept ", "within one ", "partition."]
FINAL = AnswerGenerated(query_id=QID, question="How is order kept?", answer="Order is kept within one partition.[1]",
                        degraded=False, citations=[Citation(rank=1, document_id="kafka.md", chunk_id="c1", score=0.9,
                                                            text="Kafka keeps order within a partition.")])


def deltas(*texts: str) -> list[AnswerDelta]:
    return [AnswerDelta(query_id=QID, seq=i, text=t) for i, t in enumerate(texts)]


class ScriptedTail:
    """Each poll returns the next scripted batch (then nothing): like a topic read while events land."""

    def __init__(self, *batches: list[Any]) -> None:
        self.batches = list(batches)
        self.polls = 0

    def poll(self, timeout_s: float) -> Iterator[Any]:
        self.polls += 1
        yield from (self.batches.pop(0) if self.batches else [])


def test_deltas_still_unread_when_the_answer_arrives_are_passed_on() -> None:
    first, *rest = deltas(*PIECES)
    # the answer is read in the same round as the first delta; the other deltas are still in flight
    replies = ScriptedTail([first, FINAL], [rest[0]], [rest[1]])
    seen: list[AnswerDelta] = []
    got = collect_answers(replies, {QID}, timeout_s=5, on_delta=seen.append)
    assert got == {QID: FINAL}
    assert [d.text for d in seen] == PIECES


def test_the_cli_prints_exactly_the_final_answer_after_streaming() -> None:
    out = io.StringIO()
    view = StreamView(preview=False, out=out)
    for d in deltas(*PIECES):
        view.delta(d)
    assert view.preview_text == "".join(PIECES)
    view.finish(FINAL)
    assert out.getvalue().splitlines()[0] == FINAL.answer


def test_a_lost_or_reordered_delta_does_not_change_what_is_printed() -> None:
    out = io.StringIO()
    view = StreamView(preview=False, out=out)
    d = deltas(*PIECES)
    for delta in (d[2], d[0]):  # d[1] never arrives, d[2] overtakes d[0]
        view.delta(delta)
    assert view.preview_text == PIECES[0] + PIECES[2]
    view.finish(FINAL)
    assert out.getvalue().splitlines()[0] == FINAL.answer


def test_a_non_streamed_answer_prints_the_same() -> None:
    streamed, plain = io.StringIO(), io.StringIO()
    view = StreamView(preview=False, out=streamed)
    for d in deltas(*PIECES):
        view.delta(d)
    view.finish(FINAL)
    StreamView(preview=False, out=plain).finish(FINAL)
    assert streamed.getvalue() == plain.getvalue()
