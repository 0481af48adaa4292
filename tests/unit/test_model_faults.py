"""What the answerer does when its model refuses, decided per failure class (consumers/model_guard.py), with
the official SDK talking HTTP to a local Messages API on a real socket (tests/messages_api.py).

Every query gets one final answer within its deadline whatever the model does; a refusal of every request
(the key, the model name) degrades the stage loudly and it recovers by itself; a refusal of one request's
content is that query's problem only."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from consumers.answerer import Answerer
from consumers.model_guard import GuardPolicy, ModelGuard
from infra.models.claude import ClaudeAnswerer
from infra.ops import logs
from infra.ops.health import Health
from infra.ops.metrics import Metrics
from infra.settings import AnthropicSettings
from schemas.events import AnswerGenerated, QueryRequested, utcnow
from tests.messages_api import MessagesApi
from tests.unit.test_stages import Pipeline, doc

PROBE_S = 0.5


@pytest.fixture
def api() -> Iterator[MessagesApi]:
    with MessagesApi() as server:
        yield server


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.configure("INFO", "json", stream=stream)
    try:
        yield stream
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


class Stack:
    """The answerer as `ragbus worker answerer` wires it: Claude (the real SDK, over HTTP) behind the guard."""

    def __init__(self, tmp: Path, api: MessagesApi, refusals: int = 3) -> None:
        self.pipe = Pipeline(tmp)
        self.pipe.run(doc(1, "Kafka keeps the order of messages within one partition.", doc_id="kafka"))
        self.metrics = Metrics()
        self.health = Health("answerer", self.metrics)
        self.health.assigned([("queries", 0)])  # as a runner reports it: connected, assigned, so "ok" until degraded
        settings = AnthropicSettings(RAGBUS_ANTHROPIC_API_KEY="sk-test", RAGBUS_ANTHROPIC_BASE_URL=api.url,  # type: ignore[call-arg]
                                     max_retries=0, timeout_s=5)
        claude = ClaudeAnswerer(settings)
        self.guard = ModelGuard(claude, self.health.degraded, GuardPolicy(probe_s=PROBE_S, refusals=refusals))
        self.answerer = Answerer(self.pipe.retriever(), self.guard, self.pipe.store, self.metrics,
                                 self.pipe.outputs.append, cache=self.pipe.answer_cache, concurrency=4)

    def ask(self, *texts: str, deadline_ms: int = 10_000) -> list[AnswerGenerated]:
        queries = [QueryRequested(text=t, deadline_ms=deadline_ms) for t in texts]
        answers = []
        for q, result in zip(queries, self.answerer.handle(queries), strict=True):
            assert not isinstance(result, Exception), result  # never held, never dead-lettered: answered
            [out] = result
            assert isinstance(out.event, AnswerGenerated) and out.event.query_id == q.query_id
            assert out.event.timings.total_ms < deadline_ms  # within its deadline
            answers.append(out.event)
        return answers

    def gauge(self) -> float | None:
        return self.metrics.registry.get_sample_value("ragbus_stage_degraded", {"stage": "answerer"})


def errors(stream: io.StringIO, event: str) -> list[dict[str, object]]:
    lines = [json.loads(x) for x in stream.getvalue().splitlines() if x.strip()]
    return [x for x in lines if x["level"] == "error" and x["event"].startswith(event)]


@pytest.mark.parametrize(("status", "kind", "setting"), [
    (401, "authentication_error", "RAGBUS_ANTHROPIC_API_KEY"),  # a revoked key
    (404, "not_found_error", "RAGBUS_ANTHROPIC_MODEL"),  # a model name that does not exist
    (403, "permission_error", "RAGBUS_ANTHROPIC_API_KEY"),
])
def test_a_refusal_of_every_request_degrades_every_answer_in_time_and_recovers_by_itself(
        tmp_path: Path, api: MessagesApi, log_lines: io.StringIO, status: int, kind: str, setting: str) -> None:
    s = Stack(tmp_path, api)
    api.fail = (status, kind)
    answers = s.ask(*[f"How is order kept, take {i}?" for i in range(8)])
    assert all(a.degraded and f"{status}" in a.degraded_reason and setting in a.degraded_reason for a in answers)
    assert all(a.answer.strip() and a.citations for a in answers)  # the offline extractive answer, cited
    assert len(api.requests) <= 4  # the first refusals (4 in flight at once); then no request at all
    snap = s.health.snapshot()
    assert snap["state"] == "degraded" and setting in snap["degraded"] and s.gauge() == 1
    sent = len(api.requests)
    more = s.ask("And again?", "And once more?")
    assert all(a.degraded for a in more) and len(api.requests) == sent  # degraded at once, no model call
    assert len(errors(log_lines, "answer model unusable")) == 1  # one ERROR line, naming the setting
    assert setting in str(errors(log_lines, "answer model unusable")[0]["reason"])

    api.fail = None  # the operator fixed it
    time.sleep(PROBE_S * 1.2)
    [probe] = s.ask("How is order kept now?")
    assert not probe.degraded and probe.answer == "From the documents.[1]"
    assert s.health.snapshot()["state"] == "ok" and s.health.degraded_reason is None and s.gauge() == 0
    assert not any(a.degraded for a in s.ask("How is order kept, again?"))


def test_a_400_for_every_request_is_configuration_after_a_few_in_a_row(tmp_path: Path, api: MessagesApi) -> None:
    """A misconfigured model name answered 400 invalid_request_error: each refusal looks like the request's
    own, until `refusals` in a row show it is everyone's."""
    s = Stack(tmp_path, api, refusals=3)
    api.fail = (400, "invalid_request_error")
    first = [s.ask(f"question {i}?")[0] for i in range(3)]
    assert all(a.degraded and "refused this request" in a.degraded_reason for a in first)
    assert len(api.requests) == 3
    snap = s.health.snapshot()
    assert snap["state"] == "degraded" and "RAGBUS_ANTHROPIC_MODEL" in snap["degraded"]
    [later] = s.ask("question 4?")
    assert later.degraded and "unusable" in later.degraded_reason and len(api.requests) == 3


def test_a_refusal_of_one_requests_content_is_that_querys_problem_only(tmp_path: Path, api: MessagesApi) -> None:
    s = Stack(tmp_path, api, refusals=2)
    api.refuse = lambda body: "POISON" in json.dumps(body)
    for i in range(3):  # refusals of its content, between good requests, never add up to "everyone's"
        [bad], [good] = s.ask(f"POISON {i}: how is order kept?"), s.ask(f"How is order kept, round {i}?")
        assert bad.degraded and "refused this request" in bad.degraded_reason and "400" in bad.degraded_reason
        assert not good.degraded
    assert s.health.degraded_reason is None and not s.gauge()


def test_a_key_refused_at_start_up_starts_the_answerer_degraded_not_stopped(tmp_path: Path,
                                                                           api: MessagesApi) -> None:
    s = Stack(tmp_path, api)
    api.fail = (401, "authentication_error")
    s.guard.check()  # what `ragbus worker answerer` runs at start-up
    assert s.health.snapshot()["state"] == "degraded" and "at start-up" in str(s.health.degraded_reason)
    [a] = s.ask("How is order kept?")
    assert a.degraded and api.requests == []


def test_a_query_whose_deadline_passed_is_answered_late_as_expired_never_dropped(tmp_path: Path,
                                                                                api: MessagesApi) -> None:
    s = Stack(tmp_path, api)
    old = QueryRequested(query_id="q-old", text="How is order kept?", deadline_ms=2000,
                         occurred_at=utcnow() - timedelta(seconds=30))
    [result] = s.answerer.handle([old])
    assert not isinstance(result, Exception)
    answer = result[0].event
    assert isinstance(answer, AnswerGenerated) and answer.degraded and answer.citations
    assert answer.degraded_reason.startswith("expired: the query's deadline (2000 ms) passed 28.")
    assert api.requests == []  # no model call for an answer nobody can use in time
    assert s.metrics.registry.get_sample_value("ragbus_answers_total", {"status": "expired"}) == 1
