"""The lockfiles: the exact versions (with hashes) that the image, `make install` and CI install.

- requirements.lock: what runs in production, the core and every backend extra (`ragbus[all]`); the image
  installs it.
- requirements-dev.lock: that plus the test extra (test runner, linters, the artefact checkers);
  `make install` and CI install it. It is resolved first and the runtime lock is resolved within it, so a
  package has the same version in both.

`make lock` resolves both with uv for CPython 3.11 on Linux x86_64, the target of the image and of CI,
then calls `stamp`, which records in each lock's header:

- a digest of what it was resolved from (requires-python, dependencies, every extra, and
  deploy/constraints.txt), so `check` can tell at once that pyproject.toml changed since, and
- the torch build it was resolved with (`torch==2.13.0+cpu`, from deploy/constraints.txt). torch itself is
  left out of the hashed list: the CPU-only wheel comes from a different place than PyPI (a wheel
  directory or the PyTorch CPU index), so it is installed first, by version, and everything else with
  `pip install --no-deps --require-hashes -r requirements.lock`.

    python3 deploy/lock.py check    # exit 1 with what to do when a lock is stale (stdlib only)
    python3 deploy/lock.py stamp    # after uv wrote the lock (`make lock` runs it)
    python3 deploy/lock.py torch    # the torch requirement to install first
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"
#: The extras each lock holds (None: every extra).
EXTRAS: dict[str, tuple[str, ...] | None] = {LOCK.name: ("weaviate", "mongodb", "claude", "all"), DEV_LOCK.name: None}
PYPROJECT = ROOT / "pyproject.toml"
CONSTRAINTS = ROOT / "deploy" / "constraints.txt"
DIGEST_LINE = "# pyproject-digest: "
TORCH_LINE = "# torch: "
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ \\;]+)")


def _constraint_lines(path: Path) -> list[str]:
    return [ln.split("#")[0].strip() for ln in path.read_text().splitlines() if ln.split("#")[0].strip()]


def digest(pyproject: Path = PYPROJECT, constraints: Path = CONSTRAINTS) -> str:
    """What the lock depends on, canonically: reordering or reformatting pyproject.toml changes nothing."""
    project = tomllib.loads(pyproject.read_text())["project"]
    canon = {
        "requires-python": project.get("requires-python", ""),
        "dependencies": sorted(project.get("dependencies", [])),
        "optional-dependencies": {k: sorted(v) for k, v in sorted(project.get("optional-dependencies", {}).items())},
        "constraints": sorted(_constraint_lines(constraints)),
    }
    return "sha256:" + hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()


def _header(lock_text: str, prefix: str) -> str | None:
    for line in lock_text.splitlines():
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    return None


def pins(lock_text: str) -> dict[str, str]:
    """Pinned versions by normalised name (the torch pin comes from the header)."""
    out = {_norm(m.group(1)): m.group(2) for m in map(_PIN.match, lock_text.splitlines()) if m}
    torch = _header(lock_text, TORCH_LINE)
    if torch and (m := _PIN.match(torch)):
        out[_norm(m.group(1))] = m.group(2)
    return out


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def stale(lock: Path = LOCK, pyproject: Path = PYPROJECT, constraints: Path = CONSTRAINTS) -> str | None:
    """Why the lock does not match pyproject.toml (one line that says what to do), or None."""
    if not lock.exists():
        return f"{lock.name} is missing: run `make lock`"
    recorded = _header(lock.read_text(), DIGEST_LINE)
    if recorded is None:
        return f"{lock.name} has no '{DIGEST_LINE.strip()}' line: run `make lock`"
    if recorded != digest(pyproject, constraints):
        return (f"{lock.name} is stale: the dependencies in {pyproject.name} or {constraints.name} changed since it "
                "was made; run `make lock` and commit the result")
    return None


def unsatisfied(lock_text: str, pyproject: Path = PYPROJECT, extras: tuple[str, ...] | None = None) -> list[str]:
    """Requirements of pyproject.toml (the core and `extras`, default every extra) that no pin in the lock
    satisfies."""
    from packaging.requirements import Requirement

    project: dict[str, Any] = tomllib.loads(pyproject.read_text())["project"]
    wanted = list(project.get("dependencies", []))
    for name, extra in project.get("optional-dependencies", {}).items():
        if extras is None or name in extras:
            wanted.extend(extra)
    have = pins(lock_text)
    problems = []
    for text in wanted:
        req = Requirement(text)
        if _norm(req.name) == _norm(project["name"]):
            continue  # a self-reference (`ragbus[all]`): its parts are checked on their own
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        version = have.get(_norm(req.name))
        if version is None:
            problems.append(f"{req.name} is not in the lock")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name}=={version} does not satisfy {text!r}")
    return problems


def drift(runtime_text: str, dev_text: str) -> list[str]:
    """Packages whose version differs between the two locks (the runtime lock is resolved within the dev one)."""
    dev = pins(dev_text)
    return [f"{name}: {version} in {LOCK.name}, {dev.get(name)} in {DEV_LOCK.name}"
            for name, version in sorted(pins(runtime_text).items()) if dev.get(name) != version]


def stamp(locks: tuple[Path, ...] = (LOCK, DEV_LOCK)) -> None:
    torch = [c for c in _constraint_lines(CONSTRAINTS) if _norm(c.split("=")[0]) == "torch"]
    if len(torch) != 1 or "+cpu" not in torch[0]:
        raise SystemExit(f"{CONSTRAINTS.name} must pin torch to one CPU build (torch==X.Y.Z+cpu)")
    for lock in locks:
        lines = [ln for ln in lock.read_text().splitlines()
                 if not ln.startswith((DIGEST_LINE, TORCH_LINE))]
        at = next((i for i, ln in enumerate(lines) if not ln.startswith("#")), len(lines))
        lines[at:at] = [f"{DIGEST_LINE}{digest()}",
                        f"{TORCH_LINE}{torch[0]}  (installed first, without a hash: `python3 deploy/lock.py torch`)"]
        lock.write_text("\n".join(lines) + "\n")


def torch_requirement(lock: Path = LOCK) -> str:
    line = _header(lock.read_text(), TORCH_LINE)
    if line is None:
        raise SystemExit(f"{lock.name} names no torch build: run `make lock`")
    return line.split()[0]


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else ""
    if command == "check":
        problems = [p for p in (stale(LOCK), stale(DEV_LOCK)) if p]
        if not problems and (drifted := drift(LOCK.read_text(), DEV_LOCK.read_text())):
            problems = [f"the locks disagree ({drifted[0]}): run `make lock`"]
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1 if problems else 0
    if command == "stamp":
        stamp()
        return 0
    if command == "torch":
        print(torch_requirement())
        return 0
    print("usage: deploy/lock.py check | stamp | torch", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
