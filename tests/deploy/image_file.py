"""The Dockerfile as Docker reads it: parsed by BuildKit's own parser (the `dockerfile` package wraps the Go
parser docker build uses), split into stages, and a stage's instructions run on this machine with the image's
paths moved (no container engine here)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import dockerfile

from tests.conftest import ROOT

PATH = ROOT / "Dockerfile"


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[dockerfile.Command] = field(default_factory=list)

    def all(self, keyword: str) -> list[dockerfile.Command]:
        return [c for c in self.instructions if c.cmd == keyword]

    def last(self, keyword: str) -> dockerfile.Command:
        return self.all(keyword)[-1]


def parse(path: Path = PATH) -> list[Stage]:
    """The stages, each FROM's image with the global ARGs substituted (as docker build does)."""
    stages: list[Stage] = []
    args: dict[str, str] = {}
    for command in dockerfile.parse_file(str(path)):
        if command.cmd == "ARG" and not stages:
            name, _, value = command.value[0].partition("=")
            args[name] = value
        elif command.cmd == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), command.value[0])
            alias = command.value[2] if len(command.value) == 3 and command.value[1].upper() == "AS" else ""
            stages.append(Stage(image, alias))
        elif stages:
            stages[-1].instructions.append(command)
    return stages


def env_items(command: dockerfile.Command) -> list[tuple[str, str]]:
    """ENV NAME=VALUE ...: the parser gives (name, value, name, value, ...)."""
    return list(zip(command.value[::2], command.value[1::2], strict=True))


def env_of(stage: Stage) -> dict[str, str]:
    return {name: value for c in stage.all("ENV") for name, value in env_items(c)}


def mounts(command: dockerfile.Command) -> list[dict[str, str]]:
    """A RUN's `--mount=` options as key/value dicts."""
    return [dict(kv.split("=", 1) for kv in flag.removeprefix("--mount=").split(","))
            for flag in command.flags if flag.startswith("--mount=")]


def exec_form(command: dockerfile.Command) -> list[str]:
    """An instruction in exec (JSON) form, as argv: ENTRYPOINT, CMD, HEALTHCHECK's `CMD [...]`."""
    assert command.json, f"{command.original} is not in exec form"
    argv = list(command.value)
    return argv[1:] if command.cmd == "HEALTHCHECK" and argv[0] == "CMD" else argv


def moved(table: dict[str, str], text: str) -> str:
    """`text` with every key of `table` (longest first, one pass) replaced by its value."""
    keys = sorted(table, key=len, reverse=True)
    return re.sub("|".join(map(re.escape, keys)), lambda m: table[m.group(0)], text)


def run_stage(stage: Stage, table: dict[str, str], env: dict[str, str],
              build_args: dict[str, str] | None = None) -> list[str]:
    """A stage's instructions, in order, on this machine: ARG (its default, or `build_args`' value, as
    `docker build --build-arg` gives it) and ENV, WORKDIR, RUN (each bind mount pointing at its source, the image's
    paths moved by `table`; not the one that creates the runtime user), COPY --from (a copy between moved paths).
    Returns each RUN's output."""
    args = {name: value for name, _, value in (c.value[0].partition("=") for c in stage.all("ARG"))}
    env, cwd, outputs = dict(env) | args | (build_args or {}), Path("/"), []
    for command in stage.instructions:
        kind, value = command.cmd, command.value
        if kind == "ENV":
            for name, raw in env_items(command):
                env[name] = moved(table, re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), raw))
        elif kind == "WORKDIR":
            cwd = Path(moved(table, value[0]))
        elif kind == "COPY" and any(f.startswith("--from=") for f in command.flags):
            source, target = (moved(table, v) for v in value)
            assert Path(source).is_dir(), command.original
            if source != target:
                shutil.copytree(source, target)
        elif kind == "RUN" and value[0].startswith("groupadd "):
            continue  # the runtime user: this machine's must not change (the commands run as the caller)
        elif kind == "RUN":
            binds = {m["target"]: moved(table, m["source"]) if "from" in m else str(ROOT / m["source"])
                     for m in mounts(command)}
            shell = moved(dict(table) | binds, value[0])
            done = subprocess.run(["bash", "-c", shell], cwd=cwd, env=env, capture_output=True, text=True,
                                  timeout=1500)
            assert done.returncode == 0, f"{shell}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
            outputs.append(done.stdout)
    return outputs


def hadolint(path: Path, tool: str) -> list[dict[str, object]]:
    """hadolint's findings as its JSON output gives them (code, level, line, message)."""
    done = subprocess.run([tool, "--format", "json", "--no-fail", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    findings: list[dict[str, object]] = json.loads(done.stdout or "[]")
    return findings
