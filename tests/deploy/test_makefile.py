"""The Makefile's set-up rules on a fresh checkout: each tool present, absent, or left half-installed by an
interrupted run. Each test copies the Makefile into an empty directory (a fresh clone has no .venv or .tools) and
runs the rule with a PATH on which the tools under test are fakes that log their calls: apt-get hands out a tiny
.deb built here (or fails half-way, as an interrupted download does), npm writes a small package; nothing is
downloaded. The venv rule makes a real venv."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, make_variable

#: Commands the fakes stand for: taken off the PATH the rules run with.
FAKED = {"promtool", "apt-get", "kcat", "npm", "sudo"}

FAKE_APT = """#!/bin/bash
# apt-get as the rules use it: `download prometheus` (needs `update` first when FAKE_APT_NEEDS_UPDATE is set; writes
# half a package and fails when FAKE_APT_INTERRUPT is set), `update`, `install ... kcat`.
echo "apt-get $*" >> "$FAKE_LOG"
case "$1" in
  update) touch "$FAKE_STATE/lists" ;;
  download)
    if [ -n "$FAKE_APT_NEEDS_UPDATE" ] && [ ! -e "$FAKE_STATE/lists" ]; then
      echo "E: Can't select candidate version from package prometheus" >&2; exit 100; fi
    if [ -n "$FAKE_APT_INTERRUPT" ]; then
      head -c 700 "$FAKE_DEB" > prometheus_2.42.0_amd64.deb; exit 130; fi
    cp "$FAKE_DEB" prometheus_2.42.0_amd64.deb ;;
  install)
    printf '#!/bin/sh\\necho "kcat - Apache Kafka producer and consumer tool"\\n' > "$FAKE_BIN/kcat"
    chmod +x "$FAKE_BIN/kcat" ;;
esac
"""
FAKE_NPM = """#!/bin/bash
# npm install --prefix DIR ... @asyncapi/specs@VERSION
echo "npm $*" >> "$FAKE_LOG"
prefix="$3"; version="${@: -1}"; version="${version##*@}"
package="$prefix/node_modules/@asyncapi/specs"
mkdir -p "$package/schemas"
echo "{\\"version\\": \\"$version\\"}" > "$package/package.json"
echo '{"$schema": "http://json-schema.org/draft-07/schema#"}' > "$package/schemas/3.0.0.json"
"""
PROMTOOL = "#!/bin/sh\necho 'promtool, version 2.42.0 (fake)'\n"


def _script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture(scope="module")
def system_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every command on this machine's PATH except the faked ones (a real promtool or kcat must not be found)."""
    out = tmp_path_factory.mktemp("system-bin")
    for directory in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            target = out / entry.name
            if entry.name not in FAKED and not target.exists() and os.access(entry.path, os.X_OK):
                target.symlink_to(entry.path)
    return out


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Debian package named prometheus whose only file is a promtool that prints its version."""
    root = tmp_path_factory.mktemp("deb")
    tree = root / "prometheus"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text("Package: prometheus\nVersion: 2.42.0\nArchitecture: all\n"
                                             "Maintainer: ragbus tests <tests@example.com>\nDescription: fake\n")
    (tree / "usr" / "bin").mkdir(parents=True)
    _script(tree / "usr" / "bin" / "promtool", PROMTOOL)
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(root / "prometheus.deb")],
                   check=True, capture_output=True, timeout=60)
    return root / "prometheus.deb"


@dataclass
class Checkout:
    """A fresh copy of the Makefile and the fake tools the rules find on PATH."""

    root: Path
    bin: Path
    env: dict[str, str]

    def make(self, *targets: str, **env: str) -> subprocess.CompletedProcess[str]:
        # SUDO empty: the fakes need no root (as root the Makefile's own SUDO is empty too)
        return subprocess.run(["make", "--no-print-directory", f"PYTHON={sys.executable}", "SUDO=", *targets],
                              cwd=self.root, env=self.env | env, capture_output=True, text=True, timeout=120)

    def calls(self) -> list[str]:
        log = Path(self.env["FAKE_LOG"])
        calls = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        return calls

    def leftovers(self) -> list[str]:
        tools = self.root / ".tools"
        return sorted(p.name for p in tools.iterdir() if p.name.endswith(".partial") or p.name == "deb") \
            if tools.exists() else []


@pytest.fixture
def checkout(tmp_path: Path, system_bin: Path, deb: Path) -> Checkout:
    root, fake_bin, state = tmp_path / "ragbus", tmp_path / "fake-bin", tmp_path / "state"
    for d in (root, fake_bin, state):
        d.mkdir()
    (root / "Makefile").write_text((ROOT / "Makefile").read_text())
    _script(fake_bin / "apt-get", FAKE_APT)
    _script(fake_bin / "npm", FAKE_NPM)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "FAKE_"))} | {
        "PATH": f"{fake_bin}{os.pathsep}{system_bin}", "FAKE_LOG": str(tmp_path / "calls.log"),
        "FAKE_STATE": str(state), "FAKE_DEB": str(deb), "FAKE_BIN": str(fake_bin)}
    return Checkout(root, fake_bin, env)


def local_promtool(checkout: Checkout) -> str:
    done = subprocess.run([checkout.root / make_variable("PROMTOOL", checkout.root / "Makefile"), "--version"],
                          capture_output=True, text=True, timeout=30)
    return done.stdout


# -- promtool ------------------------------------------------------------------------------------------------

def test_a_promtool_on_path_is_used_and_nothing_is_downloaded(checkout: Checkout) -> None:
    """The issue: on a machine with promtool on PATH, the old rule failed (`touch .tools/.promtool`: no such
    directory) before any test ran."""
    _script(checkout.bin / "promtool", PROMTOOL)
    done = checkout.make("promtool")
    assert done.returncode == 0, done.stderr
    assert checkout.calls() == [] and not (checkout.root / ".tools").exists()


def test_without_promtool_the_package_is_unpacked_into_tools_once(checkout: Checkout) -> None:
    done = checkout.make("promtool")
    assert done.returncode == 0, done.stderr
    assert checkout.calls() == ["apt-get download prometheus"]
    assert "promtool, version 2.42.0" in local_promtool(checkout) and checkout.leftovers() == []
    again = checkout.make("promtool")
    assert again.returncode == 0 and checkout.calls() == [], "installed once"


def test_package_lists_are_updated_when_apt_cannot_find_prometheus(checkout: Checkout) -> None:
    done = checkout.make("promtool", FAKE_APT_NEEDS_UPDATE="1")
    assert done.returncode == 0, done.stderr
    assert checkout.calls() == ["apt-get download prometheus", "apt-get update -q", "apt-get download prometheus"]
    assert "version 2.42.0" in local_promtool(checkout)


def test_an_interrupted_download_is_started_again(checkout: Checkout) -> None:
    interrupted = checkout.make("promtool", FAKE_APT_INTERRUPT="1")
    assert interrupted.returncode != 0
    assert list((checkout.root / ".tools" / "deb").glob("*.deb")), "the interruption left half a package behind"
    assert not (checkout.root / ".tools" / "prometheus").exists(), "nothing that passes for an installed tool"
    checkout.calls()
    done = checkout.make("promtool")
    assert done.returncode == 0, done.stderr
    assert checkout.calls() == ["apt-get download prometheus"]
    assert "version 2.42.0" in local_promtool(checkout) and checkout.leftovers() == []


def test_a_half_unpacked_promtool_and_old_leftovers_are_replaced(checkout: Checkout) -> None:
    """What the old rule left when dpkg-deb was interrupted: a promtool that does not run, a .deb in .tools/deb."""
    tools = checkout.root / ".tools"
    bin_dir = tools / "prometheus" / "usr" / "bin"
    bin_dir.mkdir(parents=True)
    _script(bin_dir / "promtool", "\x7fELF\x02\x01")  # a truncated binary
    (tools / "deb").mkdir()
    (tools / "deb" / "prometheus_2.41.0_amd64.deb").write_bytes(b"!<arch>\n")
    (tools / "prometheus.partial").mkdir()
    done = checkout.make("promtool")
    assert done.returncode == 0, done.stderr
    assert checkout.calls() == ["apt-get download prometheus"]
    assert "version 2.42.0" in local_promtool(checkout) and checkout.leftovers() == []


def test_a_promtool_that_left_path_is_installed_then(checkout: Checkout) -> None:
    """Nothing records that promtool was on PATH once (the old rule's stamp did, and then never installed it)."""
    _script(checkout.bin / "promtool", PROMTOOL)
    assert checkout.make("promtool").returncode == 0 and checkout.calls() == []
    (checkout.bin / "promtool").unlink()
    done = checkout.make("promtool")
    assert done.returncode == 0, done.stderr
    assert checkout.calls() == ["apt-get download prometheus"] and "2.42.0" in local_promtool(checkout)


# -- kcat ----------------------------------------------------------------------------------------------------

def test_kcat_is_installed_only_when_it_does_not_run(checkout: Checkout) -> None:
    absent = checkout.make("kcat")
    assert absent.returncode == 0, absent.stderr
    assert checkout.calls() == ["apt-get update -qq", "apt-get install -y -qq --reinstall kcat"]
    assert checkout.make("kcat").returncode == 0 and checkout.calls() == [], "present: nothing to do"
    _script(checkout.bin / "kcat", "#!/bin/sh\nexit 127\n")  # half-installed: there, but it does not run
    broken = checkout.make("kcat")
    assert broken.returncode == 0, broken.stderr
    assert checkout.calls() == ["apt-get update -qq", "apt-get install -y -qq --reinstall kcat"]


# -- the AsyncAPI schemas ------------------------------------------------------------------------------------

def specs_version(checkout: Checkout) -> str:
    package = checkout.root / ".tools" / "npm" / "node_modules" / "@asyncapi" / "specs" / "package.json"
    return package.read_text()


def test_the_asyncapi_schemas_are_installed_once_and_again_when_broken(checkout: Checkout) -> None:
    version = make_variable("ASYNCAPI_SPECS", checkout.root / "Makefile")
    done = checkout.make("specs")
    assert done.returncode == 0, done.stderr
    [call] = checkout.calls()
    assert call.startswith("npm install --prefix .tools/npm.partial ") and call.endswith(f"@asyncapi/specs@{version}")
    assert version in specs_version(checkout) and checkout.leftovers() == []
    assert checkout.make("specs").returncode == 0 and checkout.calls() == [], "present: nothing to do"
    schema = checkout.root / make_variable("SPECS", checkout.root / "Makefile")
    schema.write_text('{"$schema": "http://json')  # an interrupted write
    assert checkout.make("specs").returncode == 0 and len(checkout.calls()) == 1
    package = schema.parent.parent / "package.json"
    package.write_text('{"version": "6.0.0"}')  # an older pin's package
    assert checkout.make("specs").returncode == 0 and len(checkout.calls()) == 1
    assert version in specs_version(checkout)


def test_without_npm_the_schemas_rule_says_what_to_install(checkout: Checkout) -> None:
    (checkout.bin / "npm").unlink()
    done = checkout.make("specs")
    assert done.returncode != 0 and "npm (Node.js) installs the AsyncAPI schemas" in done.stderr


# -- the venv and uv -----------------------------------------------------------------------------------------

def test_a_half_made_venv_is_made_again_and_a_whole_one_is_kept(checkout: Checkout) -> None:
    """An interrupted `python -m venv` leaves an interpreter without pip, which every later step needs."""
    venv = checkout.root / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    done = checkout.make("venv")
    assert done.returncode == 0, done.stderr
    assert subprocess.run([venv / "bin" / "python", "-m", "pip", "--version"], capture_output=True,
                          timeout=60).returncode == 0
    (venv / "kept").touch()
    assert checkout.make("venv").returncode == 0 and (venv / "kept").exists()


def test_the_venv_rule_refuses_another_python_than_the_locks_are_for(checkout: Checkout, tmp_path: Path) -> None:
    other = _script(tmp_path / "python3.10", "#!/bin/sh\nexit 1\n")  # what `sys.version_info != (3, 11)` gives
    done = subprocess.run(["make", "--no-print-directory", f"PYTHON={other}", "venv"], cwd=checkout.root,
                          env=checkout.env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "is not Python 3.11" in done.stderr
    assert not (checkout.root / ".venv").exists()


FAKE_PIP_PYTHON = """#!/bin/bash
# `python -m pip install -q --no-deps --target DIR uv==V`: DIR/bin/uv (interrupted when FAKE_PIP_INTERRUPT is set)
echo "python $*" >> "$FAKE_LOG"
target="${@: -2:1}"
mkdir -p "$target/bin"
if [ -n "$FAKE_PIP_INTERRUPT" ]; then printf '\\x7fELF' > "$target/bin/uv"; chmod +x "$target/bin/uv"; exit 130; fi
printf '#!/bin/sh\\necho "uv 0.0.0 (fake)"\\n' > "$target/bin/uv"; chmod +x "$target/bin/uv"
"""


def test_uv_is_installed_whole_or_not_at_all(checkout: Checkout, tmp_path: Path) -> None:
    python = _script(tmp_path / "fake-python", FAKE_PIP_PYTHON)
    uv = make_variable("UV", checkout.root / "Makefile")

    def make_uv(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["make", "--no-print-directory", f"PYTHON={python}", "SUDO=", uv], cwd=checkout.root,
                              env=checkout.env | env, capture_output=True, text=True, timeout=60)

    assert make_uv(FAKE_PIP_INTERRUPT="1").returncode != 0
    assert not (checkout.root / uv).exists(), "an interrupted install leaves no uv where the rule looks"
    checkout.calls()
    done = make_uv()
    assert done.returncode == 0, done.stderr
    assert len(checkout.calls()) == 1 and checkout.leftovers() == []
    assert subprocess.run([checkout.root / uv, "--version"], capture_output=True, text=True).stdout.startswith("uv")
    assert make_uv().returncode == 0 and checkout.calls() == [], "present: nothing to do"


def test_a_dry_run_of_make_test_on_a_fresh_clone_sets_everything_up_first() -> None:
    """`make -n test` as on a fresh clone (no install stamp): the install, then each tool, then pytest."""
    done = subprocess.run(["make", "-n", "--no-print-directory", "-f", str(ROOT / "Makefile"), "test",
                           "STAMP=/nonexistent/stamp"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    order = [next(i for i, line in enumerate(lines) if marker in line) for marker in
             ("deploy/lock.py check", "-r requirements-dev.lock", "ragbus embedder export", "promtool --version",
              "npm install", "kcat -V", "-m pytest")]
    assert order == sorted(order), done.stdout
