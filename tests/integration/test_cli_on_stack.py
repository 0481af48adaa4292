"""The CLI against a running stack, as a user runs it: ingest --wait, ask (--json, --queries,
--retrieve-only), status --json, dlq list; and persistence across a restart of the stack."""

from __future__ import annotations

import json
from pathlib import Path

from infra.settings import Settings
from ragbus.client import ask_many
from ragbus.supervisor import Stack
from schemas.events import QueryRequested
from schemas.stages import PIPELINE
from tests.integration.helpers import cli


def test_cli_round_trip(stack: tuple[Stack, Settings], tmp_path: Path) -> None:
    _, settings = stack
    (tmp_path / "notes.jsonl").write_text(
        json.dumps({"id": "giraffe", "title": "Giraffes", "text": "Giraffes have seven neck vertebrae.",
                    "metadata": {"kind": "animal"}}) + "\n" +
        json.dumps({"id": "kafka-note", "text": "Kafka consumer groups share partitions."}) + "\n")
    (tmp_path / "page.html").write_text("<h1>Owls</h1><p>Owls turn their heads 270 degrees.</p>")
    done = cli(settings, "ingest", str(tmp_path / "notes.jsonl"), str(tmp_path / "page.html"), "--wait", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "3 indexed, 0 failed, 0 unfinished" in done.stderr

    done = cli(settings, "ask", "How many neck vertebrae do giraffes have?", "--json")
    answer = json.loads(done.stdout)
    assert done.returncode == 0 and answer["citations"][0]["document_id"] == "giraffe"
    assert {"query_id", "answer", "degraded", "timings", "citations"} <= answer.keys()
    assert {"document_id", "chunk_id", "score", "text"} <= answer["citations"][0].keys()

    (tmp_path / "q.jsonl").write_text('{"id": "faq/owls#1", "text": "How far can owls turn their heads?"}\n'
                                      '{"id": "q kafka", "text": "Who shares partitions?"}\n')
    done = cli(settings, "ask", "--queries", str(tmp_path / "q.jsonl"), "--retrieve-only", "--json")
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 0, done.stderr
    assert sorted(a["query_id"] for a in lines) == ["faq/owls#1", "q kafka"]  # the client's ids, unchanged
    by_id = {a["query_id"]: a for a in lines}
    assert by_id["faq/owls#1"]["retrieve_only"]
    assert by_id["faq/owls#1"]["citations"][0]["document_id"].endswith("page.html")
    assert by_id["q kafka"]["citations"][0]["document_id"] == "kafka-note"

    done = cli(settings, "ask", "Tell me about giraffes")
    assert done.returncode == 0 and "Citations:" in done.stdout and "[1] giraffe" in done.stdout

    status = json.loads(cli(settings, "status", "--json").stdout)
    assert status["documents"].get("indexed", 0) >= 3
    assert status["chunks"]["document_store"] == status["chunks"]["vector_index"] > 0
    assert set(status["dead_letters"]) == set(PIPELINE.names())
    assert {s["stage"] for s in status["stages"]} >= set(PIPELINE.names())

    assert cli(settings, "dlq", "list").returncode == 0


def test_data_survives_a_restart_of_the_stack(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    for key in ("RAGBUS_KAFKA_BOOTSTRAP_SERVERS", "RAGBUS_KAFKA_TOPIC_PREFIX"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RAGBUS_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "bees.md").write_text("# Bees\n\nHoneybees communicate with a waggle dance.\n")
    with Stack(Settings()) as first:
        done = cli(first.child_settings(), "ingest", str(tmp_path / "bees.md"), "--wait", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    with Stack(Settings()) as second:  # a new local broker: topics are new, the stores are not
        q = QueryRequested(text="How do honeybees communicate?", retrieve_only=True)
        answer = ask_many(second.child_settings(), [q], 60)[q.query_id]
    assert answer.citations and answer.citations[0].document_id == "bees.md"
