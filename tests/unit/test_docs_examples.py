"""Every example payload in the documentation is an event ragbus reads and its JSON Schema accepts;
every Python and shell example at least parses (tests/integration/test_guides.py runs them)."""

from __future__ import annotations

import json
import subprocess

import jsonschema
import pytest

from engine.serde import decode
from schemas import generate
from schemas.stages import PIPELINE
from tests.conftest import ROOT
from tests.docs_blocks import Block, blocks

DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
JSON = [b for path in DOCS for b in blocks(path, "json")]
CODE = [b for path in DOCS for b in blocks(path) if b.lang in ("python", "sh")]
GUIDES = [ROOT / "docs" / "publishing.md", ROOT / "docs" / "subscribing.md"]


def test_the_guides_show_payloads_and_code() -> None:
    for guide in GUIDES:
        assert {b.lang for b in blocks(guide)} >= {"json", "python", "sh"}, guide.name
    assert len(JSON) >= 7


@pytest.mark.parametrize("block", JSON, ids=Block.where)
def test_every_example_payload_is_valid(block: Block) -> None:
    payload = json.loads(block.code)
    assert isinstance(payload, dict) and "type" in payload, f"{block.where()}: a JSON example must be one event"
    spec = next(s for s in PIPELINE.topics() if payload["type"] in s.event_types())
    model = next(m for m in spec.models() if m.model_fields["type"].default == payload["type"])
    schema = json.loads((generate.OUT / f"{model.__name__}.json").read_text())
    errors = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(payload)]
    assert errors == [], block.where()
    decode(spec, block.code.encode())  # and ragbus's reader agrees


@pytest.mark.parametrize("block", CODE, ids=Block.where)
def test_every_code_example_parses(block: Block) -> None:
    if block.lang == "python":
        compile(block.code, block.where(), "exec")
    else:
        done = subprocess.run(["bash", "-n"], input=block.code, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, (block.where(), done.stderr)
