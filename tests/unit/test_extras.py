"""Production backends are optional extras: selecting one whose package is missing is one line naming the
extra, and the embedded defaults need none of them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from infra.settings import Settings
from kernel.errors import ConfigurationError
from ragbus import wiring
from tests.conftest import ROOT

#: (extra, the module its SDK provides, the ragbus adapter that imports it, settings that select it, build)
CASES: list[tuple[str, str, str, dict[str, str], Callable[[Settings], Any]]] = [
    ("mongodb", "pymongo", "infra.stores.mongo", {"RAGBUS_MONGODB_URI": "mongodb://127.0.0.1:9/"},
     wiring.build_store),
    ("mongodb", "pymongo", "infra.stores.mongo", {"RAGBUS_MONGODB_URI": "mongodb://127.0.0.1:9/"},
     wiring.build_cache),
    ("mongodb", "pymongo", "infra.stores.mongo", {"RAGBUS_MONGODB_URI": "mongodb://127.0.0.1:9/"},
     wiring.build_answer_cache),
    ("weaviate", "weaviate", "infra.stores.weaviate", {"RAGBUS_WEAVIATE_URL": "http://127.0.0.1:9"},
     lambda s: wiring.build_index(s, 8)),
    ("claude", "anthropic", "infra.models.claude", {"RAGBUS_ANTHROPIC_API_KEY": "sk-test"},
     wiring.build_answer_model),
    ("torch", "sentence_transformers", "infra.models.embedder", {"RAGBUS_EMBEDDER_BACKEND": "torch"},
     wiring.build_embedder),
]


@pytest.mark.parametrize(("extra", "sdk", "adapter", "env", "build"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_a_backend_without_its_package_names_the_extra(
        extra: str, sdk: str, adapter: str, env: dict[str, str], build: Callable[[Settings], Any],
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_factory(**env)
    monkeypatch.setitem(sys.modules, sdk, None)  # `import sdk` now raises ModuleNotFoundError
    monkeypatch.delitem(sys.modules, adapter, raising=False)
    with pytest.raises(ConfigurationError) as info:
        build(settings)
    message = str(info.value)
    assert f"pip install 'ragbus[{extra}]'" in message
    assert next(iter(env)) in message and "\n" not in message


def test_a_broken_ragbus_module_is_not_reported_as_a_missing_extra(
        settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_factory(RAGBUS_MONGODB_URI="mongodb://127.0.0.1:9/")
    monkeypatch.setitem(sys.modules, "infra.stores.mongo", None)
    with pytest.raises(ModuleNotFoundError):
        wiring.build_store(settings)


def test_the_cli_says_which_extra_to_install(tmp_path: Path) -> None:
    """What an operator sees: `ragbus status` with MongoDB selected and pymongo absent."""
    code = ("import sys; sys.modules['pymongo'] = None; sys.argv = ['ragbus', 'status']; "
            "from ragbus.cli import main; main()")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGBUS_")}
    env |= {"RAGBUS_DATA_DIR": str(tmp_path), "RAGBUS_MONGODB_URI": "mongodb://127.0.0.1:9/"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                          cwd=ROOT)
    assert done.returncode == 2, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert lines == [lines[0]] and "pip install 'ragbus[mongodb]'" in lines[0], done.stderr


def test_the_embedded_defaults_import_no_backend_sdk(tmp_path: Path) -> None:
    """`pip install ragbus` without extras runs `ragbus up`: the default wiring loads none of them (the ONNX
    embedder runs on an exported model without torch; `make install` exported it)."""
    code = ("import sys; from ragbus import wiring; from infra.settings import Settings; "
            "s = Settings(); wiring.build_store(s).close(); wiring.build_index(s, 8).close(); "
            "wiring.build_answer_cache(s); "
            "wiring.build_answer_model(s); wiring.build_embedder(s).embed(['x']); "
            "print(','.join(m for m in ('pymongo', 'weaviate', 'anthropic', 'torch', 'sentence_transformers') "
            "if m in sys.modules))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGBUS_") and "ANTHROPIC" not in k}
    env |= {"RAGBUS_DATA_DIR": str(tmp_path), "RAGBUS_EMBEDDER_ONNX_DIR": str(ROOT / ".ragbus" / "models")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
