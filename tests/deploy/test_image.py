"""The Dockerfile, checked without a container engine: hadolint lints it (and fails a broken copy); read by
BuildKit's own parser (tests/deploy/image_file.py), its shape is what a platform team expects (multi-stage,
pinned base, non-root, a runtime stage that copies only the exported model from the build stage); its runtime
check passes with torch made unimportable (and fails where it should); its HEALTHCHECK command and its entry
command run with its environment: the worker serves the endpoints the HEALTHCHECK and the Kubernetes probes
use, against a broker, and stops cleanly on SIGTERM. What each stage's RUN commands do is run in
tests/deploy/test_image_stages.py."""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from tests.conftest import ROOT
from tests.deploy.conftest import DEPLOY, read, tool, unknown_settings
from tests.deploy.image_file import env_of, exec_form, hadolint, mounts, parse

VENV_BIN = ROOT / ".venv" / "bin"


def _module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"ragbus_deploy_{name}", DEPLOY / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DOCKERFILE = read(ROOT / "Dockerfile")
STAGES = parse()
FINAL = STAGES[-1]
BUILD = next(s for s in STAGES if s.name == "build")
lock = _module("lock")
image_check = _module("image_check")
#: The distributions the runtime must not hold (the export lock has them: tests/deploy/test_lock.py).
EXPORT_ONLY = {"torch", "sentence-transformers", "onnx", "transformers"}


def test_hadolint_passes() -> None:
    assert hadolint(ROOT / "Dockerfile", tool("hadolint")) == []


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
    assert rule in {f["code"] for f in hadolint(broken, tool("hadolint"))}, what


def test_the_image_is_multi_stage_pinned_and_non_root() -> None:
    """Both stages on one base, a Python image pinned to a patch release (hadolint's DL3006/DL3007 catch a
    missing or `latest` tag; a minor-only tag passes them), and the last USER a numeric id other than root's."""
    assert [s.name for s in STAGES] == ["build", "runtime"]
    assert len({s.base for s in STAGES}) == 1, "change both stages' base together"
    name, _, tag = STAGES[0].base.partition("@")[0].partition(":")
    version = tag.split("-")[0].split(".")
    assert name == "python" and len(version) == 3 and all(part.isdigit() for part in version), STAGES[0].base
    user, _, group = FINAL.last("USER").value[0].partition(":")
    assert int(user) > 0 and (not group or int(group) > 0), "the final stage runs as a numeric non-root id"


def test_the_runtime_lock_holds_no_torch() -> None:
    """What the runtime stage installs (tests/deploy/test_image_stages.py) holds no torch, sentence-transformers
    or onnx, nor their header line: the image cannot hold them."""
    text = read(ROOT / "requirements.lock")
    assert not set(lock.pins(text)) & EXPORT_ONLY and lock.TORCH_LINE not in text


def test_the_runtime_stage_copies_only_the_model_and_the_wheel_from_the_build() -> None:
    """Not the build stage's venv: the exported model directory (COPY) and ragbus's wheel (a bind mount)."""
    copies = [(c.flags, c.value) for c in FINAL.all("COPY") if any(f.startswith("--from=") for f in c.flags)]
    assert copies == [(("--from=build",), ("/opt/ragbus/models", "/opt/ragbus/models"))], copies
    from_build = [m for c in FINAL.all("RUN") for m in mounts(c) if m.get("from") == "build"]
    assert [m["source"] for m in from_build] == ["/dist"], from_build
    assert env_of(FINAL)["RAGBUS_EMBEDDER_ONNX_DIR"] == env_of(BUILD)["RAGBUS_EMBEDDER_ONNX_DIR"] == \
        "/opt/ragbus/models", "the runtime reads the export where the build stage made it"


def test_the_runtime_stage_runs_its_check_after_the_model_and_the_user() -> None:
    """The check reads what the workers will read, as their user: it follows the COPY of the model and USER."""
    order = [c for c in FINAL.instructions if c.cmd in ("RUN", "USER", "COPY")]
    check = next(i for i, c in enumerate(order) if c.cmd == "RUN" and "image_check.py --runtime" in c.value[0])
    assert [c.cmd for c in order[:check]].count("USER") == 1 and order[check - 1].cmd == "USER"
    assert [c.cmd for c in order[:check]].count("COPY") == 1
    assert [m["source"] for m in mounts(order[check])] == ["deploy/image_check.py"]


def test_the_entry_command_is_ragbus_worker_with_the_container_settings() -> None:
    assert exec_form(FINAL.last("ENTRYPOINT")) == ["ragbus", "worker"]
    env = env_of(FINAL)
    assert env["RAGBUS_METRICS_HOST"] == "0.0.0.0" and env["HF_HUB_OFFLINE"] == "1"
    assert env["RAGBUS_LOG_FORMAT"] == "json"
    assert [c.value for c in FINAL.all("EXPOSE")] == [(env["RAGBUS_METRICS_PORT"],)]


def test_the_image_sets_only_settings_ragbus_reads() -> None:
    assert unknown_settings(set(env_of(FINAL))) == set()


def test_the_default_command_prints_usage() -> None:
    command = exec_form(FINAL.last("ENTRYPOINT")) + exec_form(FINAL.last("CMD"))
    done = subprocess.run([str(VENV_BIN / command[0]), *command[1:]], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Usage: ragbus worker" in done.stdout, done.stderr


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
    from engine.broker import free_port
    from engine.clients import ensure_topics
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
        proc = subprocess.Popen([*exec_form(FINAL.last("ENTRYPOINT")), "status"], env=env, cwd=data, text=True,
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


class _Recorder(http.server.BaseHTTPRequestHandler):
    paths: list[str] = []

    def do_GET(self) -> None:
        self.paths.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


def healthcheck_path() -> str:
    """The path the image's HEALTHCHECK command asks for: the command run against a server that records it."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.handle_request, daemon=True).start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAGBUS_")}
        env["RAGBUS_METRICS_PORT"] = str(server.server_address[1])
        argv = exec_form(FINAL.last("HEALTHCHECK"))
        done = subprocess.run([str(VENV_BIN / argv[0]), *argv[1:]], env=env, capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 0, done.stderr
    finally:
        server.server_close()
    return _Recorder.paths[-1]


def _http_probes(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key.endswith("Probe") and isinstance(value, dict) and "httpGet" in value:
                yield value["httpGet"]["path"]
            else:
                yield from _http_probes(value)
    elif isinstance(node, list):
        for item in node:
            yield from _http_probes(item)


def _probe_paths() -> list[str]:
    """Every HTTP path the artefacts probe: the image's HEALTHCHECK and the Kubernetes probes."""
    paths = {healthcheck_path()}
    for manifest in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for document in yaml.safe_load_all(read(manifest)):
            paths.update(_http_probes(document))
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
    done = subprocess.run(exec_form(FINAL.last("HEALTHCHECK")), env=worker.env, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr[-1000:]


@pytest.mark.broker
def test_sigterm_stops_the_worker_cleanly(worker: Running) -> None:
    """Kubernetes sends SIGTERM, then SIGKILL after terminationGracePeriodSeconds (60 s in the manifests)."""
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(45) == 0, worker.log.read_text()[-2000:]
