"""What each stage of the Dockerfile does, by running its instructions on this machine (no container engine
here), with the image's paths moved under a temporary directory and the build context this checkout:

- in the default run, with recording stand-ins for python, pip and ragbus on PATH (a `python -m venv` makes a
  venv of stand-ins; `deploy/lock.py` runs for real): the shell commands, their quoting, their order and their
  bind mounts are Docker's and bash's, and what they call is checked: which lock each stage installs with
  hashes, into which venv, torch first and only in the build stage, the runtime check run by the runtime venv's
  Python with a throw-away HOME;
- in the slow run (`make test-slow`), for real: the build stage's export venv gets exactly
  requirements-export.lock and torch, the runtime venv exactly requirements.lock and ragbus's wheel, and both
  image checks pass.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from tests.conftest import ROOT
from tests.deploy.conftest import read
from tests.deploy.image_file import moved, run_stage
from tests.deploy.test_image import BUILD, EXPORT_ONLY, FINAL, lock

#: Where the image's paths go on this machine (the build context stays this checkout).
IMAGE_PATHS = ("/opt/ragbus", "/opt/export", "/dist", "/var/lib/ragbus")

STAND_IN = f"""#!{sys.executable}
# A recording stand-in for python, pip or ragbus: one JSON line per call in $RECORD.
import json, os, shutil, sys
prog, here = os.path.basename(sys.argv[0]), os.path.dirname(os.path.abspath(sys.argv[0]))
args = sys.argv[1:]
if prog == "python" and args and args[0].endswith("deploy/lock.py"):
    os.execv({sys.executable!r}, [{sys.executable!r}, *args])
home = os.environ.get("HOME", "")
with open(os.environ["RECORD"], "a") as out:
    out.write(json.dumps({{"prog": prog, "venv": os.path.dirname(here) if here != os.environ["STAND_INS"] else None,
                          "args": args, "home": home, "home_exists": os.path.isdir(home)}}) + "\\n")
if prog == "python" and args[:2] == ["-m", "venv"]:
    bin_dir = os.path.join(args[-1], "bin")
    os.makedirs(bin_dir)
    for name in ("python", "ragbus") + (() if "--without-pip" in args else ("pip",)):
        shutil.copy(sys.argv[0], os.path.join(bin_dir, name))
if prog == "ragbus" and args[:2] == ["embedder", "export"]:
    os.makedirs(os.environ["RAGBUS_EMBEDDER_ONNX_DIR"], exist_ok=True)
"""


def _table(tmp: Path) -> dict[str, str]:
    return {path: str(tmp / path.strip("/").replace("/", "-")) for path in IMAGE_PATHS} | {"/src": str(ROOT)}


def _dry_run(tmp: Path) -> tuple[list[dict[str, object]], dict[str, str]]:
    """Both stages with stand-ins; the calls they made, with the image's paths moved back."""
    stand_ins, record = tmp / "stand-ins", tmp / "calls.jsonl"
    stand_ins.mkdir()
    for name in ("python", "pip", "ragbus"):
        (stand_ins / name).write_text(STAND_IN)
        (stand_ins / name).chmod(0o755)
    table = _table(tmp)
    Path(table["/var/lib/ragbus"]).mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAGBUS_", "VIRTUAL_ENV", "PYTHON"))}
    env |= {"PATH": f"{stand_ins}{os.pathsep}{env['PATH']}", "RECORD": str(record), "STAND_INS": str(stand_ins)}
    run_stage(BUILD, table, env)
    run_stage(FINAL, table, env)
    back = {v: k for k, v in table.items() if k != "/src"} | {f"{ROOT}/": "context:"}
    calls = [json.loads(moved(back, line)) for line in record.read_text().splitlines()]
    return calls, table


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, object]], dict[str, str]]:
    return _dry_run(tmp_path_factory.mktemp("image"))


def _calls(calls: list[dict[str, object]], prog: str, venv: str | None) -> list[list[str]]:
    return [c["args"] for c in calls if c["prog"] == prog and c["venv"] == venv]  # type: ignore[misc]


def test_the_build_stage_installs_torch_then_the_export_lock_into_its_own_venv(
        dry_run: tuple[list[dict[str, object]], dict[str, str]]) -> None:
    calls, _ = dry_run
    torch = lock.torch_requirement(ROOT / "requirements-export.lock")
    venvs = [c["args"][-1] for c in calls if c["prog"] == "python" and c["args"][:2] == ["-m", "venv"]]  # type: ignore[index]
    assert venvs == ["/opt/export", "/opt/ragbus"], "one venv per stage: the export's, then the runtime's"
    pip = _calls(calls, "pip", "/opt/export")
    assert pip[:2] == [["install", "--no-cache-dir", "--no-deps", "--index-url", "https://download.pytorch.org/whl/cpu",
                        torch],
                       ["install", "--no-cache-dir", "--no-deps", "--require-hashes", "-r", "requirements-export.lock"]]
    assert pip[2][:2] == ["wheel", "--no-cache-dir"] and pip[-1] == ["check"]


def test_the_build_stage_exports_the_model_and_checks_it_against_torch(
        dry_run: tuple[list[dict[str, object]], dict[str, str]]) -> None:
    calls, _ = dry_run
    export = [c for c in calls if c["venv"] == "/opt/export" and c["prog"] in ("ragbus", "python")]
    assert [(c["prog"], c["args"]) for c in export] == [
        ("ragbus", ["embedder", "export"]), ("python", ["context:deploy/image_check.py"]),
    ], "checked against torch at once"


def test_the_runtime_stage_installs_the_runtime_lock_with_hashes_into_a_venv_without_pip(
        dry_run: tuple[list[dict[str, object]], dict[str, str]]) -> None:
    calls, table = dry_run
    runtime = calls[next(i for i, c in enumerate(calls) if c["args"] == ["-m", "venv", "--without-pip",
                                                                          "/opt/ragbus"]):]
    installs = _calls(runtime, "pip", None)
    assert installs[0] == ["--python", "/opt/ragbus/bin/python", "install", "--no-cache-dir", "--no-deps",
                           "--require-hashes", "-r", "context:requirements.lock"]
    assert installs[1][:2] == ["--python", "/opt/ragbus/bin/python"] and installs[1][-1].startswith("/dist/ragbus-")
    assert len(installs) == 2 and not any("torch" in " ".join(args) for args in installs)
    assert not (Path(table["/opt/ragbus"]) / "bin" / "pip").exists()


def test_the_runtime_check_runs_in_the_runtime_venv_with_a_throw_away_home(
        dry_run: tuple[list[dict[str, object]], dict[str, str]]) -> None:
    """ONNX Runtime writes under ~/.cache: the check's HOME is a fresh directory, gone afterwards, and the runtime
    user's home stays empty."""
    calls, table = dry_run
    [check] = [c for c in calls if c["venv"] == "/opt/ragbus" and c["prog"] == "python"]
    assert check["args"] == ["context:deploy/image_check.py", "--runtime"]  # the bind mount of the context's file
    assert check["home_exists"] and check["home"] not in ("/var/lib/ragbus", "")
    assert not Path(str(check["home"])).exists()
    assert list(Path(table["/var/lib/ragbus"]).iterdir()) == []


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_both_stages_install_and_check_their_locks(tmp_path: Path) -> None:
    """Both stages for real: the build stage's export venv gets exactly requirements-export.lock and torch, `pip
    check` passes, the model is exported and checked against torch; the runtime venv gets exactly
    requirements.lock and ragbus's wheel, and its check passes in it, where torch is not installed at all. This is
    what shows the runtime lock is complete on its own. Here pip takes the CPU torch wheel from its configured
    wheel directory, so the build argument TORCH_INDEX names the package index instead of PyTorch's."""
    table = _table(tmp_path)
    Path(table["/var/lib/ragbus"]).mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAGBUS_", "VIRTUAL_ENV", "PYTHON"))}
    # the CPU torch wheel comes from pip's find-links here; the index is only asked for what is not there
    build = run_stage(BUILD, table, env, {"TORCH_INDEX": os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple")})
    assert "loaded offline" in build[-1] and "cosine 1.0000 to torch" in build[-1]
    runtime = run_stage(FINAL, table, env)
    assert "image check (runtime): no torch" in runtime[-1]
    assert list(Path(table["/var/lib/ragbus"]).iterdir()) == [], "the build leaves nothing in the runtime user's home"
    venv = Path(table["/opt/ragbus"])
    names = subprocess.run([str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; "
                            "print('\\n'.join(d.metadata['Name'] for d in m.distributions()))"],
                           capture_output=True, text=True, timeout=120).stdout.split()
    installed = {canonicalize_name(n) for n in names}
    assert installed == set(lock.pins(read(ROOT / "requirements.lock"))) | {"ragbus"}, "exactly the lock"
    assert not installed & (EXPORT_ONLY | {"pytest", "ruff", "pip", "setuptools"})
    assert "models" in {p.name for p in venv.iterdir()} <= {"bin", "include", "lib", "lib64", "models", "pyvenv.cfg"}
