"""The README quickstart, executed: `make demo` must work exactly as documented."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.broker


def quickstart_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "README has no ```sh block in its Quickstart"
    return [line.split("#", 1)[0].strip() for line in block.group(1).splitlines() if line.split("#", 1)[0].strip()]


def test_readme_states_the_two_commands() -> None:
    assert quickstart_commands() == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.timeout(600)
def test_make_demo_runs_and_prints_a_cited_answer(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAGBUS_", "ANTHROPIC_"))}
    env["RAGBUS_DATA_DIR"] = str(tmp_path / "data")
    done = subprocess.run(["make", "demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=580)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Citations:" in done.stdout, done.stdout
    assert "[1] docs/" in done.stdout or "[1] README.md" in done.stdout, done.stdout
    assert "degraded" in done.stdout
