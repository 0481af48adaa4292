"""A CLI user gets one line that says what to fix, and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def ragbus(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAGBUS_")}
    return subprocess.run([sys.executable, "-m", "ragbus.cli", *args], capture_output=True, text=True, timeout=60,
                          env=base | (env or {}), cwd=cwd)


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_missing_file(tmp_path: Path) -> None:
    line = one_line_error(ragbus("ingest", str(tmp_path / "nope.md"), env={"RAGBUS_DATA_DIR": str(tmp_path)}))
    assert "nope.md: no such file" in line


def test_unsupported_file_type(tmp_path: Path) -> None:
    (tmp_path / "x.docx").write_bytes(b"PK")
    line = one_line_error(ragbus("ingest", str(tmp_path / "x.docx"), env={"RAGBUS_DATA_DIR": str(tmp_path)}))
    assert "unsupported file type .docx" in line


def test_no_broker_configured(tmp_path: Path) -> None:
    line = one_line_error(ragbus("ask", "hello?", env={"RAGBUS_DATA_DIR": str(tmp_path)}))
    assert "ragbus up" in line and "RAGBUS_KAFKA_BOOTSTRAP_SERVERS" in line


@pytest.mark.timeout(60)
def test_unreachable_broker(tmp_path: Path) -> None:
    line = one_line_error(ragbus("ask", "hello?", env={"RAGBUS_DATA_DIR": str(tmp_path),
                                                       "RAGBUS_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}))
    assert "cannot reach Kafka at 127.0.0.1:9" in line


def test_invalid_query(tmp_path: Path) -> None:
    line = one_line_error(ragbus("ask", "q", "--tenant", "Bad Tenant", env={"RAGBUS_DATA_DIR": str(tmp_path)}))
    assert "invalid query" in line and "tenant" in line


def test_bad_jsonl_line(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text('{"id": "a", "text": "ok"}\n{"title": "no id"}\n')
    line = one_line_error(ragbus("ingest", str(tmp_path / "d.jsonl"), env={"RAGBUS_DATA_DIR": str(tmp_path)}))
    assert "d.jsonl:2" in line and "'id' and 'text'" in line


def test_query_ids_must_be_printable(tmp_path: Path) -> None:
    """Any printable id is taken as given (tests/integration/test_cli_on_stack.py asks with BEIR's ids);
    one that could not be echoed on its own line is refused before anything is sent."""
    (tmp_path / "q.jsonl").write_text('{"id": "faq/general#3", "text": "ok"}\n{"id": "a\\nb", "text": "no"}\n')
    line = one_line_error(ragbus("ask", "--queries", str(tmp_path / "q.jsonl"), env={"RAGBUS_DATA_DIR": str(tmp_path)}))
    assert "q.jsonl:2" in line and "printable" in line


def test_status_shows_a_degraded_stage_with_its_reason(tmp_path: Path) -> None:
    from infra.ops.health import Health
    from infra.ops.metrics import Metrics

    health = Health("answerer", Metrics(stages=["answerer"]), tmp_path / "health")
    health.assigned([("ragbus.queries.v1", 0)])
    health.degraded("Claude refused the request (401): RAGBUS_ANTHROPIC_API_KEY is not accepted")
    done = ragbus("status", env={"RAGBUS_DATA_DIR": str(tmp_path), "RAGBUS_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
                                 "RAGBUS_EMBEDDER_ONNX_DIR": str(tmp_path / "models")})
    assert done.returncode == 3, done.stderr
    assert (f"stage answerer (pid {os.getpid()}): DEGRADED (Claude refused the request (401): "
            "RAGBUS_ANTHROPIC_API_KEY is not accepted)") in done.stdout


def test_a_lost_local_broker_is_said_plainly_by_every_command(tmp_path: Path) -> None:
    import json

    (tmp_path / "broker.json").write_text(json.dumps({"bootstrap": "127.0.0.1:9", "pid": 999_999_999,
                                                      "lost": {"code": -9, "at": 0}}))
    line = one_line_error(ragbus("ask", "hello?", env={"RAGBUS_DATA_DIR": str(tmp_path)}))
    assert "the local broker (pid 999999999) exited" in line and "signal 9" in line
    assert "events in flight were lost" in line and "ragbus up" in line


def test_status_shows_each_local_stage_and_exits_3_when_one_is_broken(tmp_path: Path) -> None:
    """The health files the stage processes write (infra/ops/health_file.py), read back by `ragbus status`."""
    from infra.ops.health import Health
    from infra.ops.metrics import Metrics
    from infra.settings import Settings

    health_dir = Settings(data_dir=tmp_path).health_dir()
    Health("status", Metrics(), health_dir).assigned([])
    done = ragbus("status", env={"RAGBUS_DATA_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert f"stage status (pid {os.getpid()}): ok, lag 0, processed 0" in done.stdout
    Health("indexer", Metrics(), health_dir).broken("the vector index refuses writes")
    done = ragbus("status", env={"RAGBUS_DATA_DIR": str(tmp_path)})
    assert done.returncode == 3, done.stderr
    assert f"stage indexer (pid {os.getpid()}): BROKEN (the vector index refuses writes), lag 0" in done.stdout


def test_a_bad_acl_or_principal_is_one_line_naming_what_to_fix(tmp_path: Path) -> None:
    env = {"RAGBUS_DATA_DIR": str(tmp_path)}
    (tmp_path / "a.md").write_text("# A\n\ntext")
    line = one_line_error(ragbus("ingest", str(tmp_path / "a.md"), "--acl", "x" * 300, env=env))
    assert line.startswith("ragbus: error: --acl:") and "acl[0]" in line and "256" in line
    (tmp_path / "d.jsonl").write_text('{"id": "a", "text": "ok", "acl": ["group:hr"]}\n'
                                      '{"id": "b", "text": "no", "acl": "group:hr"}\n')
    line = one_line_error(ragbus("ingest", str(tmp_path / "d.jsonl"), env=env))
    assert "d.jsonl:2" in line and "acl must be a list of principal strings" in line
    line = one_line_error(ragbus("ask", "q", "--principal", "user:\tann", env=env))
    assert "invalid query" in line and "principals[0]" in line and "printable" in line
