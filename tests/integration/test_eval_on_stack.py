"""`ragbus eval DIR` against the running stack: a BEIR set with ids of any printable form is ingested into
a fresh tenant, asked through the bus, scored; `--no-ingest` scores the same tenant again."""

from __future__ import annotations

import json
from pathlib import Path

from infra.settings import Settings
from ragbus.supervisor import Stack
from tests.integration.helpers import cli

DOCS = {
    "faq/general#1": ("General FAQ / Giraffes", "Giraffes have seven neck vertebrae, like most mammals."),
    "faq/general#2": ("General FAQ / Owls", "Owls can turn their heads about 270 degrees."),
    "faq/library#3": ("Library FAQ / Kafka", "Kafka consumer groups share the partitions of a topic."),
    "notes/release 7": ("Release notes", "Fixed the exporter crash XK2B9Q7ZL0PA when the disk was full."),
}
QUERIES = {"q-faq/general#1": ("How many neck vertebrae does a giraffe have?", "faq/general#1"),
           "q-faq/general#2": ("How far can an owl turn its head?", "faq/general#2"),
           "q/ids#xk": ("XK2B9Q7ZL0PA", "notes/release 7")}


def write_set(directory: Path) -> Path:
    directory.mkdir()
    (directory / "corpus.jsonl").write_text("".join(json.dumps({"id": d, "title": t, "text": x}) + "\n"
                                                    for d, (t, x) in DOCS.items()))
    (directory / "queries.jsonl").write_text("".join(json.dumps({"id": q, "text": t}) + "\n"
                                                     for q, (t, _) in QUERIES.items()))
    (directory / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t1\n" for q, (_, d) in QUERIES.items()))
    return directory


def test_eval_ingests_asks_and_scores_through_the_bus(stack: tuple[Stack, Settings], tmp_path: Path) -> None:
    _, settings = stack
    beir = write_set(tmp_path / "set")
    done = cli(settings, "eval", str(beir), "--json", "--top-k", "10")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["queries"] == 3 and result["answered"] == 3 and result["documents_ingested"] == 4
    assert result["ndcg@10"] > 0.9 and result["recall@10"] == 1.0 and result["mrr@10"] > 0.9
    assert result["latency_ms"]["p50"] > 0 and result["tenant"].startswith("eval-")

    again = cli(settings, "eval", str(beir), "--no-ingest", "--tenant", result["tenant"], "--top-k", "10")
    assert again.returncode == 0, again.stderr
    assert "nDCG@10" in again.stdout and "query latency p50" in again.stdout and "ingested" not in again.stdout

    other = cli(settings, "eval", str(beir), "--no-ingest", "--tenant", "eval-nothing-here", "--json", "--top-k", "10")
    assert json.loads(other.stdout)["ndcg@10"] == 0.0  # an empty tenant finds nothing: tenants stay apart


def test_eval_input_errors_are_one_line(stack: tuple[Stack, Settings], tmp_path: Path) -> None:
    _, settings = stack
    done = cli(settings, "eval", str(tmp_path / "missing"))
    assert done.returncode == 2 and "corpus.jsonl: no such file" in done.stderr
    done = cli(settings, "eval", str(write_set(tmp_path / "set")), "--no-ingest")
    assert done.returncode == 2 and "--tenant" in done.stderr


def test_eval_runs_several_sets_in_one_table_and_compares_with_a_baseline(
        stack: tuple[Stack, Settings], tmp_path: Path) -> None:
    _, settings = stack
    first, second = write_set(tmp_path / "first"), write_set(tmp_path / "second")
    done = cli(settings, "eval", str(first), str(second), "--json", "--top-k", "10")
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [Path(r["set"]).name for r in results] == ["first", "second"]
    assert [r["tenant"][-2:] for r in results] == ["-1", "-2"]  # one fresh tenant per set
    assert all(r["recall@10"] == 1.0 and len(r["ndcg@10_per_query"]) == 3 for r in results)
    saved = tmp_path / "baseline.jsonl"
    saved.write_text(done.stdout)

    prefix = results[0]["tenant"][:-2]
    again = cli(settings, "eval", str(first), str(second), "--no-ingest", "--tenant", prefix, "--baseline",
                str(saved), "--top-k", "10")
    assert again.returncode == 0, again.stderr
    rows = [line for line in again.stdout.splitlines() if line.startswith(("| first", "| second"))]
    assert len(rows) == 2 and all("+0.000 (+0.000, +0.000)" in row for row in rows), again.stdout

    bad = cli(settings, "eval", str(first), "--baseline", str(first / "qrels.tsv"))
    assert bad.returncode == 2 and "--baseline" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_eval_asks_a_multi_turn_set_in_its_conversations_in_order(stack: tuple[Stack, Settings],
                                                                   tmp_path: Path) -> None:
    """A set whose queries carry a conversation_id: every turn is asked in its conversation, after the answer to
    the one before (so the follow-up is searched in context), and only the judged follow-ups are scored."""
    import sqlite3

    _, settings = stack
    beir = write_set(tmp_path / "conversations")
    turns = [("c1/1", "How far can an owl turn its head?", "c1"), ("c1/2", "And how many neck vertebrae?", "c1"),
             ("c2/1", "What do Kafka consumer groups share?", "c2"), ("c2/2", "Of which topic?", "c2")]
    (beir / "queries.jsonl").write_text("".join(json.dumps({"id": q, "text": t, "conversation_id": c}) + "\n"
                                                for q, t, c in turns))
    (beir / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nc1/2\tfaq/general#1\t1\nc2/2\tfaq/library#3\t1\n")
    done = cli(settings, "eval", str(beir), "--json", "--top-k", "10")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["queries"] == 2 and result["answered"] == 2 and set(result["ndcg@10_per_query"]) == {"c1/2", "c2/2"}
    with sqlite3.connect(settings.data_dir / "ragbus.sqlite") as db:
        stored = db.execute("SELECT conversation_id, seq, question, search_query FROM conversation_turns "
                            "WHERE tenant = ? ORDER BY conversation_id, seq", (result["tenant"],)).fetchall()
    by_conversation: dict[str, list[tuple[int, str, str]]] = {}
    for conversation, seq, question, searched in stored:
        by_conversation.setdefault(conversation.rsplit("/", 1)[-1], []).append((seq, question, searched))
    assert [q for _, q, _ in by_conversation["c1"]] == ["How far can an owl turn its head?",
                                                        "And how many neck vertebrae?"]  # in order, in context
    assert by_conversation["c2"][1][2] != "Of which topic?"  # the follow-up was searched rewritten
