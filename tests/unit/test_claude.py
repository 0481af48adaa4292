"""The Claude answerer against the real anthropic SDK with a scripted transport (no network)."""

from __future__ import annotations

from typing import Any

import pytest

from infra.models.claude import PROMPT_VERSION, SYSTEM_PROMPT, ClaudeAnswerer, estimate_cost
from infra.settings import AnthropicSettings
from kernel.errors import AnswerModelError, ConfigurationError, ModelRequestError
from kernel.ports import SearchHit
from tests import fake_claude as fc

HITS = [
    SearchHit("c-kafka", "kafka.md", 1, 0, "Kafka keeps order within a partition.", 0.9, "Kafka", ("Ordering",)),
    SearchHit("c-mongo", "mongo.md", 1, 0, "MongoDB stores BSON documents.", 0.5, "Mongo"),
]


def settings(**kw: Any) -> AnthropicSettings:
    base: dict[str, Any] = {"api_key": "test-key", "model": "claude-sonnet-4-6", "fallback_model": "claude-haiku-4-5",
                            "timeout_s": 5.0, "max_retries": 2}
    return AnthropicSettings(**(base | kw))


def answerer(fake: fc.FakeClaude, steps: int = 0, **kw: Any) -> ClaudeAnswerer:
    s = settings(**kw)
    return ClaudeAnswerer(s, client=fake.client(s.max_retries), agentic_steps=steps)


def test_answer_is_cited_and_chunks_go_in_as_data() -> None:
    fake = fc.FakeClaude(fc.message([fc.text("Order is kept per partition.", [fc.cite("c-kafka", 0)]),
                                     fc.text(" That is all.")]))
    got = answerer(fake).answer("How is order kept?", HITS)
    assert got.text == "Order is kept per partition.[1] That is all."
    assert [c.chunk_id for c in got.citations] == ["c-kafka"] and got.citations[0].rank == 1
    assert not got.degraded and got.model == "claude-sonnet-4-6" and got.prompt_version == PROMPT_VERSION
    assert got.usage.input_tokens == 100 and got.usage.output_tokens == 20 and got.usage.cost_usd == estimate_cost(
        "claude-sonnet-4-6", type("U", (), {"input_tokens": 100, "output_tokens": 20,
                                            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0})())
    sent = fake.requests[0]
    assert sent["system"] == SYSTEM_PROMPT and "untrusted data" in sent["system"]
    blocks = sent["messages"][0]["content"]
    assert [b["type"] for b in blocks] == ["search_result", "search_result", "text"]
    assert blocks[0]["source"] == "c-kafka" and blocks[0]["citations"] == {"enabled": True}
    assert blocks[0]["content"] == [{"type": "text", "text": "Kafka keeps order within a partition."}]


def test_citations_to_unknown_chunks_are_dropped_and_counted() -> None:
    fake = fc.FakeClaude(fc.message([fc.text("Claim.", [fc.cite("c-mongo", 1), fc.cite("invented", 0),
                                                        fc.cite("c-kafka", 7)])]))
    got = answerer(fake).answer("q", HITS)
    assert [c.chunk_id for c in got.citations] == ["c-mongo"]
    assert got.dropped_citations == 2
    assert got.text == "Claim.[1]"


def test_streamed_answer_publishes_deltas_in_order() -> None:
    fake = fc.FakeClaude(fc.stream(["Kafka ", "keeps ", "order."], [fc.cite("c-kafka", 0)]))
    deltas: list[str] = []
    got = answerer(fake).answer("q", HITS, on_delta=deltas.append)
    assert deltas == ["Kafka ", "keeps ", "order."]
    assert got.text == "Kafka keeps order.[1]" and [c.chunk_id for c in got.citations] == ["c-kafka"]
    assert fake.requests[0]["stream"] is True


def test_429_is_retried_then_succeeds() -> None:
    fake = fc.FakeClaude(fc.error(429, "rate_limit_error"), fc.message([fc.text("Fine.", [fc.cite("c-kafka", 0)])]))
    got = answerer(fake).answer("q", HITS)
    assert not got.degraded and got.text == "Fine.[1]"
    assert fake.models == ["claude-sonnet-4-6", "claude-sonnet-4-6"]


def test_persistent_529_falls_back_then_gives_up_with_the_reason() -> None:
    fake = fc.FakeClaude(fc.error(529))
    with pytest.raises(AnswerModelError, match="Claude gave no answer.*529"):
        answerer(fake).answer("How is order kept?", HITS)
    assert fake.models == ["claude-sonnet-4-6"] * 3 + ["claude-haiku-4-5"] * 3  # 1 try + 2 retries each


def test_fallback_model_answers_when_the_primary_is_overloaded() -> None:
    fake = fc.FakeClaude(fc.error(529), fc.error(529), fc.error(529),
                         fc.message([fc.text("Backup.", [fc.cite("c-kafka", 0)])]))
    got = answerer(fake).answer("q", HITS)
    assert not got.degraded and got.model == "claude-haiku-4-5"


def test_timeout_gives_up_within_the_deadline() -> None:
    fake = fc.FakeClaude(fc.timeout())
    with pytest.raises(AnswerModelError, match="APITimeoutError"):
        answerer(fake, max_retries=0).answer("q", HITS, deadline_s=5)


def test_no_time_left_means_no_model_call() -> None:
    fake = fc.FakeClaude(fc.message([fc.text("never")]))
    with pytest.raises(AnswerModelError, match="deadline"):
        answerer(fake).answer("q", HITS, deadline_s=0.5)
    assert fake.requests == []


@pytest.mark.parametrize(("status", "kind", "setting"), [
    (401, "authentication_error", "RAGBUS_ANTHROPIC_API_KEY"), (403, "permission_error", "RAGBUS_ANTHROPIC_API_KEY"),
    (402, "billing_error", "RAGBUS_ANTHROPIC_API_KEY"), (404, "not_found_error", "RAGBUS_ANTHROPIC_MODEL")])
def test_refusals_of_every_request_are_configuration_errors_naming_the_setting(status: int, kind: str,
                                                                              setting: str) -> None:
    fake = fc.FakeClaude(fc.error(status, kind))
    with pytest.raises(ConfigurationError, match=f"{status}.*{setting}"):
        answerer(fake).answer("q", HITS)
    assert len(fake.requests) == 1  # no retry, no fallback: neither would mend it


@pytest.mark.parametrize(("status", "kind"), [(400, "invalid_request_error"), (413, "request_too_large"),
                                              (422, "invalid_request_error")])
def test_a_refusal_of_this_request_is_the_requests_own_problem(status: int, kind: str) -> None:
    fake = fc.FakeClaude(fc.error(status, kind))
    with pytest.raises(ModelRequestError, match=f"refused this request.*{status}"):
        answerer(fake).answer("q", HITS)
    assert len(fake.requests) == 1


def test_check_at_start_up_verifies_the_key_and_the_models() -> None:
    ok = fc.FakeClaude(fc.model_info())
    answerer(ok).check()
    assert [r["path"] for r in ok.requests] == ["/v1/models/claude-sonnet-4-6", "/v1/models/claude-haiku-4-5"]
    with pytest.raises(ConfigurationError, match="401"):
        answerer(fc.FakeClaude(fc.error(401, "authentication_error"))).check()
    with pytest.raises(ConfigurationError, match="404"):
        answerer(fc.FakeClaude(fc.model_info(), fc.error(404, "not_found_error"))).check()


def test_agentic_search_and_malformed_tool_calls() -> None:
    fake = fc.FakeClaude(
        fc.message([fc.tool_use({"query": ""}, id_="t1"), fc.tool_use({"q": 1}, name="rm_rf", id_="t2")],
                   stop="tool_use"),
        fc.message([fc.tool_use({"query": "bson", "top_k": 1}, id_="t3")], stop="tool_use"),
        fc.message([fc.text("BSON.", [fc.cite("c-extra", 2)])]),
    )
    searched: list[tuple[str, int]] = []

    def search(q: str, k: int) -> list[SearchHit]:
        searched.append((q, k))
        return [SearchHit("c-extra", "extra.md", 1, 0, "BSON is binary JSON.", 0.7)]

    got = answerer(fake, steps=3).answer("What is BSON?", HITS[:2], search=search)
    assert searched == [("bson", 1)]
    errors = fake.requests[1]["messages"][-1]["content"]
    assert [e["is_error"] for e in errors] == [True, True]
    assert "invalid input" in errors[0]["content"] and "unknown tool" in errors[1]["content"]
    assert fake.requests[0]["tools"][0]["name"] == "search_documents"
    assert got.text == "BSON.[1]" and [c.chunk_id for c in got.citations] == ["c-extra"]


def test_agentic_steps_are_bounded() -> None:
    fake = fc.FakeClaude(fc.message([fc.tool_use({"query": "again"})], stop="tool_use"))
    with pytest.raises(AnswerModelError, match="empty answer"):  # it never answered: not passed off as one
        answerer(fake, steps=2, fallback_model=None).answer("q", HITS, search=lambda q, k: [])
    assert len(fake.requests) == 3
    assert "tools" not in fake.requests[-1]  # the last step must answer


@pytest.mark.parametrize("model", ["claude-sonnet-4-5-20250929", "claude-haiku-4-5"])
def test_cost_is_estimated_for_known_models(model: str) -> None:
    usage = type("U", (), {"input_tokens": 1_000_000, "output_tokens": 0, "cache_creation_input_tokens": 0,
                           "cache_read_input_tokens": 0})()
    assert estimate_cost(model, usage) > 0


def test_key_and_gateway_come_from_either_variable_and_stay_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAGBUS_ANTHROPIC_API_KEY", raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-secret-value")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://gateway.internal:8080")
    s = AnthropicSettings()
    assert s.api_key is not None and s.api_key.get_secret_value() == "sk-secret-value"
    assert "sk-secret-value" not in repr(s) and "sk-secret-value" not in s.model_dump_json()
    client = ClaudeAnswerer(s)._client
    assert str(client.base_url).startswith("http://gateway.internal:8080")
