"""The Dockerfile, checked without a container engine: hadolint lints it (and fails a broken copy), its shape is
what a platform team expects (multi-stage, pinned base, non-root, the lock installed with hashes), and its
entry command runs with its environment against a broker: the worker serves the endpoints the image's
HEALTHCHECK and the Kubernetes probes use, and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.deploy.conftest import DEPLOY, read, tool, unknown_settings

VENV_BIN = ROOT / ".venv" / "bin"


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(text: str) -> list[Stage]:
    """Stages of a Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#")))
    stages: list[Stage] = []
    args: dict[str, str] = {}
    for line in filter(None, (ln.strip() for ln in joined.splitlines())):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG" and not stages and "=" in rest:
            name, _, value = rest.partition("=")
            args[name] = value
        elif keyword == "FROM":
            image, _, alias = rest.partition(" AS ")
            image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), image)
            stages.append(Stage(image.strip(), alias.strip()))
        elif stages:
            stages[-1].instructions.append((keyword, rest))
    return stages


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        for item in shlex.split(args):
            name, _, value = item.partition("=")
            env[name] = value
    return env


DOCKERFILE = read(ROOT / "Dockerfile")
STAGES = parse(DOCKERFILE)
FINAL = STAGES[-1]


def test_hadolint_passes() -> None:
    done = subprocess.run([tool("hadolint"), "--no-color", str(ROOT / "Dockerfile")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("what", "old", "new", "rule"), [
    ("unpinned base", "python:3.11.14-slim-bookworm", "python:latest", "DL3007"),
    ("root user", "USER 10001:10001", "USER root", "DL3002"),
    ("unpinned apt", "RUN python -m venv /opt/ragbus", "RUN apt-get install -y git && python -m venv /opt/ragbus",
     "DL3008"),
])
def test_hadolint_fails_a_broken_dockerfile(tmp_path: Path, what: str, old: str, new: str, rule: str) -> None:
    assert old in DOCKERFILE, what
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.replace(old, new))
    done = subprocess.run([tool("hadolint"), "--no-color", str(broken)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and rule in done.stdout, done.stdout


def test_the_image_is_multi_stage_pinned_and_non_root() -> None:
    assert len(STAGES) >= 2, "a build stage and a runtime stage"
    for stage in STAGES:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", stage.base), stage.base
    user = FINAL.all("USER")[-1]
    assert re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", user), f"final stage runs as {user!r}, not a numeric non-root id"
    assert any("COPY --from=build /opt/ragbus /opt/ragbus" in f"COPY {a}" for a in FINAL.all("COPY"))
    assert not any("pip" in a for a in FINAL.all("RUN")), "nothing is installed in the runtime stage"


def test_the_entry_command_is_ragbus_worker_with_the_container_settings() -> None:
    assert json.loads(FINAL.all("ENTRYPOINT")[-1]) == ["ragbus", "worker"]
    env = env_of(FINAL)
    assert env["RAGBUS_METRICS_HOST"] == "0.0.0.0" and env["HF_HUB_OFFLINE"] == "1"
    assert env["RAGBUS_LOG_FORMAT"] == "json"
    assert FINAL.all("EXPOSE") == [env["RAGBUS_METRICS_PORT"]]
    build = STAGES[0]
    assert any("deploy/image_check.py" in a for a in build.all("RUN")), "the model is loaded at build time"


def test_the_image_sets_only_settings_ragbus_reads() -> None:
    assert unknown_settings(set(env_of(FINAL))) == set()


def test_the_default_command_prints_usage() -> None:
    command = json.loads(FINAL.all("ENTRYPOINT")[-1]) + json.loads(FINAL.all("CMD")[-1])
    done = subprocess.run([str(VENV_BIN / command[0]), *command[1:]], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Usage: ragbus worker" in done.stdout, done.stderr


def test_the_baked_model_loads_offline() -> None:
    """What the build stage runs to prove the weights are in the image (here, in the same locked venv)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAGBUS_", "HF_"))} | {"HF_HUB_OFFLINE": "1"}
    env["RAGBUS_EMBEDDER_ONNX_DIR"] = str(ROOT / ".ragbus" / "models")  # where `make install` exported it
    done = subprocess.run([str(VENV_BIN / "python"), str(DEPLOY / "image_check.py")], capture_output=True,
                          text=True, timeout=300, env=env, cwd="/")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loaded offline (384 dimensions)" in done.stdout


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@dataclass
class Running:
    proc: subprocess.Popen[str]
    env: dict[str, str]
    port: int
    log: Path


@pytest.fixture(scope="module")
def worker(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """`ragbus worker status` as the image runs it: the Dockerfile's ENTRYPOINT and ENV (data directory and
    port moved to this test's), plus what a deployment adds: the broker and a topic prefix."""
    from infra.kafka.broker import free_port
    from infra.kafka.clients import ensure_topics
    from infra.settings import Settings

    data = tmp_path_factory.mktemp("image")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGBUS_")} | env_of(FINAL)
    env |= {"PATH": f"{VENV_BIN}:{os.environ['PATH']}", "HOME": str(data), "RAGBUS_DATA_DIR": str(data),
            "RAGBUS_METRICS_PORT": str(port), "RAGBUS_KAFKA_BOOTSTRAP_SERVERS": broker,
            "RAGBUS_KAFKA_TOPIC_PREFIX": f"img{port}.", "RAGBUS_KAFKA_SESSION_TIMEOUT_MS": "2000"}
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        ensure_topics(Settings())
    finally:
        os.environ.clear()
        os.environ.update(saved)
    log = data / "worker.log"
    with log.open("w") as out:
        proc = subprocess.Popen([*json.loads(FINAL.all("ENTRYPOINT")[-1]), "status"], env=env, cwd=data, text=True,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if _get(f"http://127.0.0.1:{port}/metrics")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        assert proc.poll() is None, log.read_text()[-3000:]
        yield Running(proc, env, port, log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.broker
def test_the_worker_serves_metrics_and_logs_json(worker: Running) -> None:
    status, body = _get(f"http://127.0.0.1:{worker.port}/metrics")
    assert status == 200 and "ragbus_events_total" in body
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "stage started" not in worker.log.read_text():
        time.sleep(0.2)
    started = [ln for ln in worker.log.read_text().splitlines() if "stage started" in ln]
    assert started and json.loads(started[0])["stage"] == "status", worker.log.read_text()[-2000:]


def _probe_paths() -> list[str]:
    """Every HTTP path the artefacts probe: the image's HEALTHCHECK and the Kubernetes probes."""
    paths = set(re.findall(r"127\.0\.0\.1:%s(/\w+)", " ".join(FINAL.all("HEALTHCHECK"))))
    for manifest in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        paths.update(re.findall(r"(?m)^\s*path:\s*(/\w+)\s*$", read(manifest)))
    return sorted(paths)


@pytest.mark.broker
@pytest.mark.parametrize("path", _probe_paths())
def test_every_probed_endpoint_answers(worker: Running, path: str) -> None:
    """Each answers 200 once the worker has joined its group (readiness needs the partition assignment)."""
    deadline = time.monotonic() + 60
    status, body = _get(f"http://127.0.0.1:{worker.port}{path}")
    while status != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
        status, body = _get(f"http://127.0.0.1:{worker.port}{path}")
    assert status == 200, f"{path}: {status} {body[:300]}"


@pytest.mark.broker
def test_the_image_healthcheck_command_passes(worker: Running) -> None:
    command = json.loads(re.search(r"CMD (\[.*\])", FINAL.all("HEALTHCHECK")[-1]).group(1))  # type: ignore[union-attr]
    done = subprocess.run(command, env=worker.env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr[-1000:]


@pytest.mark.broker
def test_sigterm_stops_the_worker_cleanly(worker: Running) -> None:
    """Kubernetes sends SIGTERM, then SIGKILL after terminationGracePeriodSeconds (60 s in the manifests)."""
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(45) == 0, worker.log.read_text()[-2000:]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_build_stage_installs_and_checks_the_runtime_lock(tmp_path: Path) -> None:
    """The build stage's RUN commands, in order, on this machine instead of in the base image: a fresh venv
    gets exactly requirements.lock (no test tools), `pip check` passes, and the image check loads the model.
    This is what shows the runtime lock is complete on its own. Here pip takes the CPU torch wheel from its
    configured wheel directory, so the PyTorch index argument is dropped."""
    build = STAGES[0]
    venv = tmp_path / "opt-ragbus"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAGBUS_", "VIRTUAL_ENV"))}
    env |= {"PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "PIP_NO_CACHE_DIR": "1"}
    # the build stage's own settings (where the ONNX export goes), moved with the venv
    env |= {k: v.replace("/opt/ragbus", str(venv)) for k, v in env_of(build).items() if k.startswith("RAGBUS_")}
    workdir = ROOT
    for kind, args in build.instructions:
        if kind == "WORKDIR":
            workdir = ROOT if args == "/src" else Path(args)
        if kind != "RUN":
            continue
        command = (args.replace("/opt/ragbus", str(venv)).replace("/src/", f"{ROOT}/")
                   .replace('--index-url "${TORCH_INDEX}" ', ""))
        done = subprocess.run(["bash", "-c", command], cwd=workdir, env=env, capture_output=True, text=True,
                              timeout=1500)
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    assert "loaded offline" in done.stdout
    freeze = subprocess.run([str(venv / "bin" / "pip"), "freeze"], capture_output=True, text=True, timeout=120).stdout
    assert "pytest==" not in freeze and "ruff==" not in freeze, "the image holds no test tools"
