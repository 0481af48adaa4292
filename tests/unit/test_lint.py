"""The import direction (the Kafka clients only in engine/ and infra/, other vendor SDKs only in infra/) and the lint
rules hold for the whole tree."""

from __future__ import annotations

import shutil
import subprocess
import sys

from tests.conftest import ROOT


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff") or str(ROOT / ".venv" / "bin" / "ruff")
    done = subprocess.run([ruff, "check", "--no-cache", str(ROOT)], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert done.returncode == 0, done.stdout[-4000:]


def _loaded(modules: str, sdks: tuple[str, ...]) -> list[str]:
    """Which of `sdks` importing `modules` (in a fresh interpreter) loads."""
    code = f"import sys; import {modules}; print(','.join(m for m in {sdks!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    return [m for m in done.stdout.strip().split(",") if m]


def test_stage_modules_do_not_import_vendor_sdks() -> None:
    """Belt and braces for TID251: importing the pure stage modules loads no broker or store client."""
    assert _loaded("streams.chunker, streams.embedder, consumers.indexer, consumers.answerer",
                   ("faust", "confluent_kafka", "lancedb", "weaviate", "pymongo", "anthropic")) == []


def test_the_engine_imports_no_store_or_model_sdk() -> None:
    """TID251 lets engine/ import vendor SDKs (it is the Kafka clients' home); the store and model SDKs stay in
    infra/."""
    engine = ", ".join(f"engine.{m}" for m in ("delivery", "faust_runner", "consumer_runner", "groups", "deadletters",
                                                 "tail", "broker", "security"))
    assert _loaded(engine, ("lancedb", "weaviate", "pymongo", "anthropic", "boto3", "sentence_transformers")) == []


def test_mypy_strict_is_clean() -> None:
    """mypy --strict (pydantic plugin) over the stage, schema and composition packages and what they import."""
    mypy = shutil.which("mypy") or str(ROOT / ".venv" / "bin" / "mypy")
    done = subprocess.run([mypy], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:]
