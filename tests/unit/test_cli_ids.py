"""Ids from the command line: document ids do not depend on the working directory, deleting an id nobody
published says so, and a --queries file's ids (query_id or id, any printable text) are accepted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.settings import Settings
from kernel.errors import RagbusError
from kernel.ports import DocumentRecord
from ragbus import wiring
from ragbus.client import documents_from
from schemas.events import Status
from tests.unit.test_cli import one_line_error, ragbus


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    docs = tmp_path / "repo" / "docs"
    (docs / "guide").mkdir(parents=True)
    (docs / "intro.md").write_text("# Intro\n\nHello.")
    (docs / "guide" / "setup.md").write_text("# Setup\n\nRun it.")
    (tmp_path / "repo" / "README.md").write_text("# Readme\n\nHi.")
    (tmp_path / "repo" / "notes.jsonl").write_text(json.dumps({"id": "n1", "text": "A note."}) + "\n")
    return tmp_path / "repo"


def ids(paths: list[Path], prefix: str | None = None) -> list[str]:
    return [e.document_id for e in documents_from(paths, Settings(), None, "default", "c", prefix)]


def test_the_same_files_get_the_same_ids_from_any_directory(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = ["docs/guide/setup.md", "docs/intro.md", "README.md"]
    seen = []
    for cwd, paths in [(tree, [Path("docs"), Path("README.md")]),
                       (tree / "docs" / "guide", [Path(".."), Path("../../README.md")]),
                       (tree.parent, [tree / "docs", tree / "README.md"]),
                       (tree / "docs", [Path("."), Path("../README.md")])]:
        monkeypatch.chdir(cwd)
        seen.append(ids(paths))
    assert seen == [expected] * 4


def test_an_id_prefix_replaces_the_directory_name(tree: Path) -> None:
    assert ids([tree / "docs"], "acme/handbook/") == ["acme/handbook/guide/setup.md", "acme/handbook/intro.md"]
    assert ids([tree / "README.md", tree / "notes.jsonl"], "kb:") == ["kb:README.md", "kb:n1"]
    assert ids([tree / "docs"], "") == ["guide/setup.md", "intro.md"]


def test_two_inputs_with_one_id_are_refused(tree: Path) -> None:
    (tree / "other").mkdir()
    (tree / "other" / "intro.md").write_text("# Another intro")
    with pytest.raises(RagbusError, match="would both get the id 'intro.md'"):
        ids([tree / "docs", tree / "other"], "")


def test_deleting_an_unknown_id_says_so(tmp_path: Path) -> None:
    env = {"RAGBUS_DATA_DIR": str(tmp_path)}
    store = wiring.build_store(Settings(data_dir=tmp_path))
    store.apply_status(DocumentRecord("default", "docs/intro.md", 5, Status.INDEXED))
    store.apply_status(DocumentRecord("default", "docs/old.md", 5, Status.DELETED))
    line = one_line_error(ragbus("delete", "intro.md", env=env))
    assert "no document 'intro.md' in tenant 'default', nothing deleted; did you mean docs/intro.md?" in line
    assert "--force" in line
    done = ragbus("delete", "docs/old.md", env=env)  # already deleted: nothing to publish, nothing to fail
    assert done.returncode == 0 and "already deleted" in done.stderr
    # a known id gets as far as the broker (none here), and --force skips the check
    assert "RAGBUS_KAFKA_BOOTSTRAP_SERVERS" in one_line_error(ragbus("delete", "docs/intro.md", env=env))
    assert "RAGBUS_KAFKA_BOOTSTRAP_SERVERS" in one_line_error(ragbus("delete", "never.md", "--force", env=env))


def test_a_queries_file_takes_query_id_or_id_of_any_printable_form(tmp_path: Path) -> None:
    env = {"RAGBUS_DATA_DIR": str(tmp_path)}
    good = tmp_path / "q.jsonl"
    good.write_text(json.dumps({"query_id": "faq/general#3", "text": "Why?"}) + "\n"
                    + json.dumps({"id": "q-faq/library#how-do-i-parcel-out-work", "text": "How?"}) + "\n"
                    + json.dumps({"id": 42, "text": "Numbers too?"}) + "\n")
    line = one_line_error(ragbus("ask", "--queries", str(good), "--retrieve-only", "--json", env=env))
    assert "RAGBUS_KAFKA_BOOTSTRAP_SERVERS" in line  # parsed and valid: only the broker is missing

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query_id": "a", "text": "ok"}) + "\n" + json.dumps({"query_id": "b", "text": " "}))
    assert "bad.jsonl:2: invalid query: field 'text': question must not be blank" in one_line_error(
        ragbus("ask", "--queries", str(bad), env=env))
    bad.write_text(json.dumps({"question": "no id"}) + "\n")
    assert "bad.jsonl:1: need an object with 'query_id' (or 'id') and 'text'" in one_line_error(
        ragbus("ask", "--queries", str(bad), env=env))
    bad.write_text(json.dumps({"id": "same", "text": "a"}) + "\n" + json.dumps({"query_id": "same", "text": "b"}))
    assert "bad.jsonl:2: query id 'same' repeats line 1" in one_line_error(
        ragbus("ask", "--queries", str(bad), env=env))
