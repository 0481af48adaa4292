"""The AnswerModel contract: the offline extractive answerer and the Claude answerer (the real SDK against a
scripted Messages API) both pass it."""

from __future__ import annotations

import re
from typing import Any

import httpx2
import pytest

from infra.models.claude import ClaudeAnswerer
from infra.settings import AnthropicSettings
from kernel.ports import AnswerModel, SearchHit
from retrieval.extractive import ExtractiveAnswerer
from tests import fake_claude as fc

HITS = [SearchHit("c-kafka", "kafka.md", 1, 0, "Kafka keeps the order of messages within one partition.", 0.9,
                  "Kafka", ("Ordering",)),
        SearchHit("c-bson", "mongo.md", 1, 0, "MongoDB stores documents as BSON, a binary form of JSON.", 0.4)]
MARK = re.compile(r"\[(\d+)\]")


def scripted_messages_api(body: dict[str, Any]) -> httpx2.Response:
    """Cites the first search result when there is one, says it cannot find the answer when there is none."""
    sources = [b for b in body["messages"][0]["content"] if b["type"] == "search_result"]
    pieces = ["Order is kept ", "within one partition."] if sources else ["I cannot find that in the documents."]
    cites = [fc.cite(sources[0]["source"], 0)] if sources else []
    if body.get("stream"):
        return fc.stream(pieces, cites)(body)
    return fc.message([fc.text("".join(pieces), cites)])(body)


@pytest.fixture(params=["extractive", "claude"])
def model(request: pytest.FixtureRequest) -> AnswerModel:
    if request.param == "extractive":
        return ExtractiveAnswerer()
    fake = fc.FakeClaude(scripted_messages_api)
    return ClaudeAnswerer(AnthropicSettings(api_key="k"), client=fake.client(0))


def test_an_answer_cites_only_what_it_was_given(model: AnswerModel) -> None:
    got = model.answer("How does Kafka keep order?", HITS, deadline_s=30)
    assert got.text.strip() and got.model and got.prompt_version and got.prompt_version == model.prompt_version
    assert got.citations and {c.chunk_id for c in got.citations} <= {h.chunk_id for h in HITS}
    assert [c.rank for c in got.citations] == list(range(1, len(got.citations) + 1))
    assert {int(n) for n in MARK.findall(got.text)} <= {c.rank for c in got.citations}
    assert got.citations[0].chunk_id == "c-kafka"


def test_streamed_deltas_spell_the_answer(model: AnswerModel) -> None:
    deltas: list[str] = []
    got = model.answer("How does Kafka keep order?", HITS, on_delta=deltas.append, deadline_s=30)
    assert deltas and all(deltas)
    assert MARK.sub("", "".join(deltas)).split() == MARK.sub("", got.text).split()


def test_no_evidence_still_gets_an_answer_without_citations(model: AnswerModel) -> None:
    got = model.answer("What is the capital of Mars?", [], deadline_s=30)
    assert got.text.strip() and got.citations == [] and not MARK.search(got.text)
