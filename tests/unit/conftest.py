"""Unit tests see ragbus's defaults, not the environment: the session-wide stack of the integration suite
(tests/integration/conftest.py) keeps its RAGBUS_* settings in the environment while it runs, and a
developer's shell may have its own."""

from __future__ import annotations

import pytest

from tests.conftest import ONNX_CACHE, clear_settings_env


@pytest.fixture(autouse=True)
def _default_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_settings_env(monkeypatch)
    # not a setting under test: the session's exported ONNX model, so a stack started here does not export
    # its own copy into a temporary data directory (torch, ~15 s each)
    monkeypatch.setenv("RAGBUS_EMBEDDER_ONNX_DIR", str(ONNX_CACHE))
