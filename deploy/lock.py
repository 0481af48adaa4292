"""The lockfiles: the exact versions (with hashes) that the image, `make install` and CI install.

- requirements.lock: what runs in production, the core and the backend extras (weaviate, mongodb, claude, s3),
  without torch, sentence-transformers, onnx and whatever only they need (deploy/runtime-excludes.txt); the
  image's runtime stage installs it.
- requirements-export.lock: the core and the `torch` extra: what `ragbus embedder export` and the
  torch-vs-ONNX check need. The image's build stage installs it into a venv of its own, exports the ONNX
  model there, and the runtime stage copies only the exported model.
- requirements-dev.lock: everything (every extra, torch included, and the test extra: test runner, linters,
  the artefact checkers); `make install` and CI install it. It is resolved first and the other two are
  resolved within it, so a package has the same version in all three.

`make lock` resolves them with uv for CPython 3.11 on Linux x86_64, the target of the image and of CI
(`python3 deploy/lock.py args LOCK` gives uv the extras of each), then calls `stamp`, which records in each
lock's header:

- a digest of what it was resolved from (requires-python, dependencies, every extra, deploy/constraints.txt
  and deploy/runtime-excludes.txt), so `check` can tell at once that pyproject.toml changed since, and
- in the locks that hold the torch extra, the torch build it was resolved with (`torch==2.13.0+cpu`, from
  deploy/constraints.txt). torch itself is left out of the hashed list: the CPU-only wheel comes from a
  different place than PyPI (a wheel directory or the PyTorch CPU index), so it is installed first, by
  version, and everything else with `pip install --no-deps --require-hashes -r LOCK`. The runtime lock
  names what it leaves out instead.

    python3 deploy/lock.py check         # exit 1 with what to do when a lock is stale (stdlib only)
    python3 deploy/lock.py stamp         # after uv wrote the locks (`make lock` runs it)
    python3 deploy/lock.py torch [LOCK]  # the torch requirement to install first (default: the dev lock)
    python3 deploy/lock.py args LOCK     # what uv resolves LOCK from (`make lock` runs it)
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
EXPORT_LOCK = ROOT / "requirements-export.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"
#: Every lock, the one the others are resolved within first.
LOCKS = (DEV_LOCK, LOCK, EXPORT_LOCK)
#: The extras each lock holds (None: every extra).
EXTRAS: dict[str, tuple[str, ...] | None] = {
    LOCK.name: ("weaviate", "mongodb", "claude", "s3"),
    EXPORT_LOCK.name: ("torch",),
    DEV_LOCK.name: None,
}
PYPROJECT = ROOT / "pyproject.toml"
CONSTRAINTS = ROOT / "deploy" / "constraints.txt"
#: What the runtime lock leaves out of its resolution (uv --excludes), with everything only they need.
RUNTIME_EXCLUDES = ROOT / "deploy" / "runtime-excludes.txt"
#: The locks that leave the excluded packages out (the others pin torch's CPU build in their header).
EXCLUDING = (LOCK.name,)
DIGEST_LINE = "# pyproject-digest: "
TORCH_LINE = "# torch: "
EXCLUDED_LINE = "# excluded: "
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ \\;]+)")


def _constraint_lines(path: Path) -> list[str]:
    return [ln.split("#")[0].strip() for ln in path.read_text().splitlines() if ln.split("#")[0].strip()]


def excluded(path: Path = RUNTIME_EXCLUDES) -> list[str]:
    """The normalised names the runtime lock leaves out (deploy/runtime-excludes.txt)."""
    return sorted(_norm(name) for name in _constraint_lines(path))


def digest(pyproject: Path = PYPROJECT, constraints: Path = CONSTRAINTS, excludes: Path = RUNTIME_EXCLUDES) -> str:
    """What the locks depend on, canonically: reordering or reformatting pyproject.toml changes nothing."""
    project = tomllib.loads(pyproject.read_text())["project"]
    canon = {
        "requires-python": project.get("requires-python", ""),
        "dependencies": sorted(project.get("dependencies", [])),
        "optional-dependencies": {k: sorted(v) for k, v in sorted(project.get("optional-dependencies", {}).items())},
        "constraints": sorted(_constraint_lines(constraints)),
        "runtime-excludes": excluded(excludes),
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


def stale(lock: Path = LOCK, pyproject: Path = PYPROJECT, constraints: Path = CONSTRAINTS,
          excludes: Path = RUNTIME_EXCLUDES) -> str | None:
    """Why the lock does not match pyproject.toml (one line that says what to do), or None."""
    if not lock.exists():
        return f"{lock.name} is missing: run `make lock`"
    recorded = _header(lock.read_text(), DIGEST_LINE)
    if recorded is None:
        return f"{lock.name} has no '{DIGEST_LINE.strip()}' line: run `make lock`"
    if recorded != digest(pyproject, constraints, excludes):
        return (f"{lock.name} is stale: the dependencies in {pyproject.name}, {constraints.name} or {excludes.name} "
                "changed since it was made; run `make lock` and commit the result")
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


def drift(lock_text: str, dev_text: str, name: str = LOCK.name) -> list[str]:
    """Packages whose version differs between lock `name` and the dev lock (it is resolved within the dev one)."""
    dev = pins(dev_text)
    return [f"{pkg}: {version} in {name}, {dev.get(pkg)} in {DEV_LOCK.name}"
            for pkg, version in sorted(pins(lock_text).items()) if dev.get(pkg) != version]


def forbidden(lock_text: str, excludes: Path = RUNTIME_EXCLUDES) -> list[str]:
    """The excluded packages a runtime lock pins anyway (in its list or as its torch build)."""
    return sorted(set(pins(lock_text)) & set(excluded(excludes)))


def compile_args(lock: Path) -> list[str]:
    """What uv resolves `lock` from, beyond pyproject.toml and the common flags (the Makefile's LOCK_FLAGS)."""
    extras = EXTRAS[lock.name]
    args = ["--all-extras"] if extras is None else [a for e in extras for a in ("--extra", e)]
    if lock.name in EXCLUDING:
        args += ["--excludes", str(RUNTIME_EXCLUDES.relative_to(ROOT))]
    return args


def stamp(locks: tuple[Path, ...] = LOCKS) -> None:
    torch = [c for c in _constraint_lines(CONSTRAINTS) if _norm(c.split("=")[0]) == "torch"]
    if len(torch) != 1 or "+cpu" not in torch[0]:
        raise SystemExit(f"{CONSTRAINTS.name} must pin torch to one CPU build (torch==X.Y.Z+cpu)")
    for lock in locks:
        lines = [ln for ln in lock.read_text().splitlines()
                 if not ln.startswith((DIGEST_LINE, TORCH_LINE, EXCLUDED_LINE))]
        at = next((i for i, ln in enumerate(lines) if not ln.startswith("#")), len(lines))
        if lock.name in EXCLUDING:
            last = (f"{EXCLUDED_LINE}{' '.join(excluded())}  "
                    f"(and what only they need: {RUNTIME_EXCLUDES.relative_to(ROOT)})")
        else:
            last = f"{TORCH_LINE}{torch[0]}  (installed first, without a hash: `python3 deploy/lock.py torch`)"
        lines[at:at] = [f"{DIGEST_LINE}{digest()}", last]
        lock.write_text("\n".join(lines) + "\n")


def torch_requirement(lock: Path = DEV_LOCK) -> str:
    line = _header(lock.read_text(), TORCH_LINE)
    if line is None:
        raise SystemExit(f"{lock.name} names no torch build: run `make lock`")
    return line.split()[0]


def problems(root: Path = ROOT) -> list[str]:
    """Everything `check` reports about the locks of the tree at `root`: a stale lock, locks that disagree, an
    excluded package in the runtime lock."""
    pyproject, constraints = root / PYPROJECT.relative_to(ROOT), root / CONSTRAINTS.relative_to(ROOT)
    excludes = root / RUNTIME_EXCLUDES.relative_to(ROOT)
    found = [p for p in (stale(root / lock.name, pyproject, constraints, excludes) for lock in LOCKS) if p]
    if found:
        return found
    dev = (root / DEV_LOCK.name).read_text()
    for lock in (LOCK, EXPORT_LOCK):
        if drifted := drift((root / lock.name).read_text(), dev, lock.name):
            found.append(f"the locks disagree ({drifted[0]}): run `make lock`")
    for name in EXCLUDING:
        if leaked := forbidden((root / name).read_text(), excludes):
            found.append(f"{name} pins {', '.join(leaked)}, which {excludes.name} leaves out of the runtime: "
                         "run `make lock`")
    return found


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else ""
    if command == "check":
        found = problems()
        for problem in found:
            print(f"error: {problem}", file=sys.stderr)
        return 1 if found else 0
    if command == "stamp":
        stamp()
        return 0
    if command == "torch" and len(argv) <= 3:
        print(torch_requirement(ROOT / argv[2] if len(argv) == 3 else DEV_LOCK))
        return 0
    if command == "args" and len(argv) == 3 and Path(argv[2]).name in EXTRAS:
        print(" ".join(compile_args(ROOT / Path(argv[2]).name)))
        return 0
    print("usage: deploy/lock.py check | stamp | torch [LOCK] | args LOCK", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
