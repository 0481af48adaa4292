"""The Claude reranker and query rewriter: bounded, cached, degrading gracefully (the real SDK against a
scripted Messages API, tests/fake_claude.py)."""

from __future__ import annotations

import pytest

from infra.models.claude_retrieval import PASSAGE_CHARS, ClaudeReranker, ClaudeRewriter, client_for
from infra.settings import AnthropicSettings
from kernel.errors import ConfigurationError, RetrievalModelError
from kernel.ports import SearchHit
from tests import fake_claude as fc

HITS = [SearchHit(f"c{i}", f"d{i}", 1, 0, f"passage {i} " + "x" * 3000, 0.9 - i / 10) for i in range(30)]


def ranking(order: list[int]) -> fc.Reply:
    return fc.message([fc.tool_use({"ranking": order}, name="rank_results")], stop="tool_use")


def test_the_reranker_sends_a_bounded_request_and_applies_the_ranking() -> None:
    fake = fc.FakeClaude(ranking([2, 0, 1]))
    reranker = ClaudeReranker(fake.client(0), "claude-haiku-4-5", depth=5)
    out = reranker.rerank("which passage?", HITS)
    assert [h.chunk_id for h in out[:5]] == ["c2", "c0", "c1", "c3", "c4"]  # left-out results keep their order
    assert [h.chunk_id for h in out[5:]] == [h.chunk_id for h in HITS[5:]]  # beyond the depth: untouched
    body = fake.requests[0]
    results = [b for b in body["messages"][0]["content"] if b["type"] == "search_result"]
    assert len(results) == 5 and all(len(r["content"][0]["text"]) <= PASSAGE_CHARS for r in results)
    assert body["max_tokens"] <= 400 and body["tool_choice"] == {"type": "tool", "name": "rank_results"}
    assert body["model"] == "claude-haiku-4-5" and "not instructions" in body["system"]


def test_the_same_question_over_the_same_hits_is_one_call() -> None:
    fake = fc.FakeClaude(ranking([1, 0]))
    reranker = ClaudeReranker(fake.client(0), "claude-haiku-4-5", depth=3)
    first = reranker.rerank("Which one?", HITS[:3])
    assert reranker.rerank("  which ONE? ", HITS[:3]) == first and reranker.calls == 1
    reranker.rerank("Which one?", HITS[1:4])  # other hits: another call
    assert reranker.calls == 2


@pytest.mark.parametrize("reply", [
    fc.error(529), fc.timeout(),
    fc.message([fc.text("I think 2 then 0")]),  # no tool call
    ranking([99, -1]),  # nothing usable
    fc.message([fc.tool_use({"ranking": "first"}, name="rank_results")], stop="tool_use"),  # invalid input
], ids=["overloaded", "timeout", "no-tool-call", "out-of-range", "invalid-input"])
def test_an_unusable_reply_is_a_retrieval_model_error(reply: fc.Reply) -> None:
    reranker = ClaudeReranker(fc.FakeClaude(reply).client(0), "claude-haiku-4-5", depth=5, timeout_s=1)
    with pytest.raises(RetrievalModelError):
        reranker.rerank("q", HITS[:5])


def test_a_refused_key_is_a_configuration_error() -> None:
    reranker = ClaudeReranker(fc.FakeClaude(fc.error(401, "authentication_error")).client(0), "claude-haiku-4-5")
    with pytest.raises(ConfigurationError):
        reranker.rerank("q", HITS[:3])
    with pytest.raises(ConfigurationError, match="RAGBUS_ANTHROPIC_API_KEY"):
        client_for(AnthropicSettings(api_key=None))


def test_multi_query_rewriting_is_cached() -> None:
    fake = fc.FakeClaude(fc.message([fc.tool_use({"queries": ["kafka partition ordering", " "]},
                                                 name="search_queries")], stop="tool_use"))
    rewriter = ClaudeRewriter(fake.client(0), "claude-haiku-4-5", style="multi")
    assert rewriter.rewrite("How is order kept?") == ["kafka partition ordering"]
    assert rewriter.rewrite("how is order kept?") == ["kafka partition ordering"] and rewriter.calls == 1
    assert fake.requests[0]["messages"][0]["content"][0]["text"] == "Question: How is order kept?"


def test_a_hypothetical_answer_and_its_failures() -> None:
    fake = fc.FakeClaude(fc.message([fc.tool_use({"passage": "Kafka orders messages per partition."},
                                                 name="hypothetical_passage")], stop="tool_use"))
    assert ClaudeRewriter(fake.client(0), "m", style="hyde").rewrite("q") == ["Kafka orders messages per partition."]
    with pytest.raises(RetrievalModelError):
        ClaudeRewriter(fc.FakeClaude(fc.error(500)).client(0), "m", style="hyde", timeout_s=1).rewrite("q")
