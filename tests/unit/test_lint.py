"""The import direction (vendor SDKs only in infra/) and the lint rules hold for the whole tree."""

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


def test_stage_modules_do_not_import_vendor_sdks() -> None:
    """Belt and braces for TID251: importing the pure stage modules loads no broker or store client."""
    code = ("import sys; import streams.chunker, streams.embedder, consumers.indexer, consumers.answerer; "
            "bad = [m for m in ('faust', 'lancedb', 'weaviate', 'pymongo', 'anthropic') if m in sys.modules]; "
            "print(','.join(bad))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_mypy_strict_is_clean() -> None:
    """mypy --strict (pydantic plugin) over the stage, schema and composition packages and what they import."""
    mypy = shutil.which("mypy") or str(ROOT / ".venv" / "bin" / "mypy")
    done = subprocess.run([mypy], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:]
