"""The Reranker contract: the sentence-transformers cross-encoder (a tiny model the test builds, no
download) and the Claude listwise reranker (the real SDK against a scripted Messages API) both pass it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from kernel.ports import Reranker, SearchHit
from tests import fake_claude as fc

QUESTION = "How does Kafka keep the order of messages?"
HITS = [SearchHit(f"c{i}", f"doc{i}", 1, 0, text, 0.5 - i / 100, f"Title {i}", ("Section",))
        for i, text in enumerate([
            "MongoDB stores documents as BSON.",
            "Kafka keeps the order of messages within one partition.",
            "Penguins huddle together in winter.",
            "Consumers commit offsets after processing.",
            "Weaviate runs hybrid search."])]


def overlap_ranking(body: dict[str, Any]) -> httpx2.Response:
    """A listwise ranker: orders the results by the words they share with the question."""
    content = body["messages"][0]["content"]
    question = set(re.findall(r"\w+", content[-1]["text"].split("\n")[0].lower()))
    results = [b for b in content if b["type"] == "search_result"]
    shared = [len(question & set(re.findall(r"\w+", r["content"][0]["text"].lower()))) for r in results]
    ranking = sorted(range(len(results)), key=lambda i: (-shared[i], results[i]["content"][0]["text"]))
    return fc.message([fc.tool_use({"ranking": ranking}, name="rank_results")], stop="tool_use")(body)


@pytest.fixture(scope="module")
def cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_models import build_cross_encoder

    return build_cross_encoder(tmp_path_factory.mktemp("tiny-ce"), [QUESTION, *(h.text for h in HITS)])


@pytest.fixture(params=["cross-encoder", "claude"])
def reranker(request: pytest.FixtureRequest, cross_encoder_dir: Path) -> Iterator[Reranker]:
    if request.param == "cross-encoder":
        from infra.models.reranker import CrossEncoderReranker

        yield CrossEncoderReranker(str(cross_encoder_dir))
    else:
        from infra.models.claude_retrieval import ClaudeReranker

        yield ClaudeReranker(fc.FakeClaude(overlap_ranking).client(0), "claude-haiku-4-5", depth=20)


def test_reranking_reorders_the_same_hits_best_first(reranker: Reranker) -> None:
    out = reranker.rerank(QUESTION, HITS)
    assert sorted(h.chunk_id for h in out) == sorted(h.chunk_id for h in HITS)
    assert [h.score for h in out] == sorted((h.score for h in out), reverse=True)
    assert {(h.chunk_id, h.text, h.document_id) for h in out} == {(h.chunk_id, h.text, h.document_id) for h in HITS}


def test_the_order_depends_on_the_passages_not_on_how_they_came(reranker: Reranker) -> None:
    first = [h.chunk_id for h in reranker.rerank(QUESTION, HITS)]
    assert [h.chunk_id for h in reranker.rerank(QUESTION, list(reversed(HITS)))] == first
    assert [h.chunk_id for h in reranker.rerank(QUESTION, HITS)] == first


def test_nothing_and_one_hit(reranker: Reranker) -> None:
    assert reranker.rerank(QUESTION, []) == []
    assert [h.chunk_id for h in reranker.rerank(QUESTION, HITS[:1])] == ["c0"]


def test_long_and_unusual_passages_are_scored_not_refused(reranker: Reranker) -> None:
    odd = [SearchHit("x", "d", 1, 0, "word " * 3000, 0.1), SearchHit("y", "d", 1, 1, "🚀 カフカ \x00", 0.1)]
    assert {h.chunk_id for h in reranker.rerank(QUESTION, odd)} == {"x", "y"}
