from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import Phase, settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
#: Exported ONNX models, shared by every test and stack of the run (and with `make demo`): exporting
#: once per test data directory would cost ~20 s each time.
ONNX_CACHE = Path(os.environ.get("RAGBUS_EMBEDDER_ONNX_DIR") or ROOT / ".ragbus" / "models")
os.environ["RAGBUS_EMBEDDER_ONNX_DIR"] = str(ONNX_CACHE)
pytest_plugins = ["tests.containers"]


def make_variable(name: str, makefile: Path = ROOT / "Makefile") -> str:
    """What make makes of a Makefile variable (so a test follows the Makefile instead of copying its paths)."""
    done = subprocess.run(["make", "-s", "-f", str(makefile), "--eval", f"print-var: ; @echo $({name})",
                           "print-var"], cwd=makefile.parent, capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.strip()


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """One local Tansu broker for the session; tests isolate themselves with a topic prefix."""
    from engine.broker import LocalBroker

    with LocalBroker(Path(os.environ.get("TMPDIR", "/tmp")) / f"ragbus-test-broker-{os.getpid()}.log") as b:
        yield b.bootstrap


def clear_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget every ragbus (and Anthropic) setting of the environment for one test: it sees the defaults."""
    for key in list(os.environ):
        if key.startswith("RAGBUS_") or key in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):
            monkeypatch.delenv(key)


@pytest.fixture
def settings_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Settings isolated to this test: own data dir, own topic prefix, short session timeout."""
    from infra.settings import Settings

    clear_settings_env(monkeypatch)

    def make(bootstrap: str | None = None, **env: str) -> Settings:
        monkeypatch.setenv("RAGBUS_DATA_DIR", str(tmp_path / "data"))
        monkeypatch.setenv("RAGBUS_EMBEDDER_ONNX_DIR", str(ONNX_CACHE))
        monkeypatch.setenv("RAGBUS_KAFKA_TOPIC_PREFIX", f"t{uuid.uuid4().hex[:8]}.")
        monkeypatch.setenv("RAGBUS_KAFKA_SESSION_TIMEOUT_MS", "2000")
        if bootstrap:
            monkeypatch.setenv("RAGBUS_KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        return Settings()

    return make


# `pytest --hypothesis-profile=no-shrink`: report the first failing example at once (the broker-backed
# property tests wait up to 90 s per example, which shrinking multiplies).
settings.register_profile("no-shrink", phases=[Phase.explicit, Phase.reuse, Phase.generate])
