"""The publisher and subscriber guides, executed: every Python and shell example in docs/publishing.md and
docs/subscribing.md runs, in order, against the whole stack, with a plain confluent-kafka client and
kcat, and what they did is checked in the stores.

The examples name `localhost:9092`, `https://files.example.com` and `/srv/ragbus-content`; here those
are the stack's broker, a loopback HTTPS server and a temporary directory (the only substitutions).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import confluent_kafka
import pytest

from engine.clients import EventProducer, ensure_topics, topic_name
from infra.settings import Settings
from ragbus import wiring
from ragbus.client import ask_many
from ragbus.supervisor import Stack
from schemas.events import QueryRequested, Status
from schemas.topics import TOPICS
from tests.conftest import ROOT
from tests.docs_blocks import Block, blocks
from tests.https_server import HttpsServer
from tests.pdf import tiny_pdf

from .helpers import read_all, wait_until

pytestmark = pytest.mark.broker

SECURITY = b"""<html><head><title>Security</title></head><body>
<h1>Security</h1><p>Report a lost laptop to the service desk within one hour.</p>
<h2>Passwords</h2><p>Use the password manager; never reuse a password.</p></body></html>"""
REPORT = ["Annual report 2025. Revenue grew by twelve percent to 4.2 million euros.",
          "Outlook: two new offices open in 2026."]


def newer_librdkafka(tmp: Path) -> Path:
    """A directory whose librdkafka.so.1 is the one inside the confluent-kafka wheel (2.16). Debian bookworm's
    kcat links librdkafka 2.0.2, which cannot parse the local broker's (Tansu's) ApiVersions answer
    ("ApiVersionRequest failed: Local: Read underflow"); docs/publishing.md says so and shows this fix.
    Against a real Kafka cluster the system library works."""
    if shutil.which("kcat") is None:
        pytest.fail("kcat is not installed: run `make tools` (Debian package kcat)")
    libs = sorted((Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs").glob("librdkafka*.so*"))
    assert libs, "the confluent-kafka wheel no longer ships librdkafka where this test looks"
    (tmp / "librdkafka.so.1").symlink_to(libs[0])
    return tmp


def runner(settings: Settings, server: HttpsServer, root: Path, cwd: Path) -> Callable[[Block], str]:
    substitutions = {"localhost:9092": settings.kafka.bootstrap_servers or "",
                     "https://files.example.com": server.url("").rstrip("/"),
                     "/srv/ragbus-content": str(root)}
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGBUS_")}
    lib = cwd / "lib"
    lib.mkdir(exist_ok=True)
    env["LD_LIBRARY_PATH"] = str(newer_librdkafka(lib)) if not (lib / "librdkafka.so.1").exists() else str(lib)

    def run(block: Block) -> str:
        code = block.code
        for old, new in substitutions.items():
            code = code.replace(old, new)
        command = [sys.executable, "-c", code] if block.lang == "python" else ["bash", "-euo", "pipefail", "-c", code]
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"{block.where()} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    return run


def executable(path: Path) -> list[Block]:
    return [b for b in blocks(path) if b.lang in ("python", "sh")]


@pytest.fixture(scope="module")
def published(stack: tuple[Stack, Settings], content_sources: tuple[HttpsServer, Path],
              tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """docs/publishing.md, run from top to bottom."""
    _, settings = stack
    server, root = content_sources
    server.route("/handbook/security.html", SECURITY, content_type="text/html; charset=utf-8")
    (root / "reports").mkdir(exist_ok=True)
    (root / "reports" / "2025-annual.pdf").write_bytes(tiny_pdf(REPORT))
    run = runner(settings, server, root, tmp_path_factory.mktemp("publisher"))
    outputs = [run(block) for block in executable(ROOT / "docs" / "publishing.md")]
    assert any("handbook/onboarding.md indexed" in out for out in outputs)
    return settings


def test_the_publishing_guide_publishes_updates_deletes_and_reads_by_url(published: Settings) -> None:
    store = wiring.build_store(published)

    def state(doc: str) -> tuple[int, Status] | None:
        record = store.get_document("acme", doc)
        return None if record is None else (record.version, record.status)

    expected = {"handbook/onboarding.md": (2, Status.INDEXED), "handbook/vpn.md": (1, Status.DELETED),
                "reports/2025-annual.pdf": (1, Status.INDEXED), "handbook/security.html": (1, Status.INDEXED)}
    wait_until(lambda: all(state(d) == s for d, s in expected.items()), 120,
               f"the guide's documents to reach {expected}")
    assert not store.chunk_versions("acme", "handbook/vpn.md")
    assert {v for _, v in store.chunk_versions("acme", "handbook/onboarding.md")} == {2}
    questions = {"How much did revenue grow in 2025?": ("reports/2025-annual.pdf", ["page 1"]),
                 "Who do I tell about a lost laptop?": ("handbook/security.html", ["Security"])}
    batch = [QueryRequested(tenant="acme", query_id=f"guide-{n}", text=q, retrieve_only=True)
             for n, q in enumerate(questions)]
    answers = ask_many(published, batch, 60)
    for q in batch:
        document, path = questions[q.text]
        top = answers[q.query_id].citations[0]
        assert (top.document_id, top.section_path) == (document, path), q.text


def test_the_publishing_guides_permissions_hold_after_the_revocation(published: Settings) -> None:
    """The guide gives the salary bands to group:hr and Alice, then revokes Alice (acl_version 1)."""
    store = wiring.build_store(published)
    wait_until(lambda: (d := store.get_document("acme", "hr/salary-bands.md")) is not None
               and d.status is Status.INDEXED and (acl := store.get_acl("acme", "hr/salary-bands.md")) is not None
               and acl.order.acl_version == 1, 120, "the salary bands indexed with the revocation applied")
    askers = {"hr": ["group:hr"], "alice": ["user:alice"], "anonymous": []}
    batch = [QueryRequested(tenant="acme", query_id=f"guide-acl-{who}", text="When are salary bands reviewed?",
                            retrieve_only=True, principals=principals) for who, principals in askers.items()]
    answers = ask_many(published, batch, 60)
    cited = {q.query_id: {c.document_id for c in answers[q.query_id].citations} for q in batch}
    assert "hr/salary-bands.md" in cited["guide-acl-hr"]
    assert "hr/salary-bands.md" not in cited["guide-acl-alice"] | cited["guide-acl-anonymous"]
    assert "handbook/onboarding.md" in cited["guide-acl-alice"]  # documents without an ACL: everyone's


def test_the_subscribing_guide_asks_and_reads_the_answer(published: Settings,
                                                         content_sources: tuple[HttpsServer, Path],
                                                         tmp_path: Path) -> None:
    server, root = content_sources
    run = runner(published, server, root, tmp_path)
    python, shell, _ = executable(ROOT / "docs" / "subscribing.md")
    out = run(python)
    answer = next(line for line in out.splitlines() if not line.startswith(("...", "[")))
    assert "27 days" in answer and "[1] handbook/onboarding.md > Onboarding > Holidays: New starters get 27" in out
    line = run(shell).strip().splitlines()[0]
    key, value = line.split("\t", 1)
    assert key == "support/ticket-881#1" and json.loads(value)["query_id"] == key


def test_the_subscribing_guides_conversation_is_answered_in_context_then_erased(
        published: Settings, content_sources: tuple[HttpsServer, Path], tmp_path: Path) -> None:
    server, root = content_sources
    *_, conversation = executable(ROOT / "docs" / "subscribing.md")
    out = runner(published, server, root, tmp_path)(conversation).splitlines()
    assert out[0] == ("support/chat-42#1 turn 1 searched 'How many days of holiday do new starters get?': "
                      "handbook/onboarding.md")
    assert out[1] == ("support/chat-42#2 turn 2 searched 'And on their first day? holiday new starters': "
                      "handbook/onboarding.md")
    assert out[2].startswith("support/chat-42#3 turn 1 searched 'And on their first day?': ")
    # erased: no turn of it is stored, and the answers of the turns before the deletion left the answer log
    conversations = wiring.build_conversations(published)
    assert conversations.stored_turns("acme", "support/chat-42") == [
        t for t in conversations.stored_turns("acme", "support/chat-42") if t.query_id == "support/chat-42#3"]
    store = wiring.build_store(published)
    assert store.get_answer("acme", "support/chat-42#1") is None
    assert store.get_answer("acme", "support/chat-42#2") is None
    assert store.get_answer("acme", "support/chat-42#3") is not None


def test_a_keyless_document_event_is_indexed_and_rekeyed(published: Settings) -> None:
    producer = EventProducer(published)
    value = json.dumps({"type": "document.arrived", "tenant": "acme", "document_id": "handbook/keyless.md",
                        "text": "Keyless events are re-keyed by the chunker."}).encode()
    producer.send_raw(topic_name(published, TOPICS.documents), None, value)
    producer.flush()
    store = wiring.build_store(published)
    wait_until(lambda: (d := store.get_document("acme", "handbook/keyless.md")) is not None
               and d.status is Status.INDEXED, 60, "the keyless document to be indexed")
    # every event derived from it travels keyed tenant/document_id, so per-document order holds downstream
    for spec in (TOPICS.chunks, TOPICS.embedded, TOPICS.status):
        keys = {m.key() for m in read_all(published, spec, expect=10**6, timeout_s=3)
                if json.loads(m.value()).get("document_id") == "handbook/keyless.md"}
        assert keys == {b"acme/handbook/keyless.md"}, (spec.name, keys)


def test_dlq_list_json_is_an_array_empty_or_not(published: Settings, settings_factory) -> None:  # type: ignore[no-untyped-def]
    def dlq_json(settings: Settings) -> list[dict[str, object]]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAGBUS_")} | {
            "RAGBUS_KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers or "",
            "RAGBUS_KAFKA_TOPIC_PREFIX": settings.kafka.topic_prefix, "RAGBUS_DATA_DIR": str(settings.data_dir)}
        done = subprocess.run([sys.executable, "-m", "ragbus.cli", "dlq", "list", "--stage", "chunker", "--json"],
                              env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert isinstance(result, list)
        return result

    fresh = settings_factory(published.kafka.bootstrap_servers)
    ensure_topics(fresh)
    assert dlq_json(fresh) == []
    reasons = {d["key"]: d["reason"] for d in dlq_json(published)}
    assert reasons["acme/handbook/no-type.md"] == ("invalid documents.v1 event: missing field 'type': expected one "
                                                   "of document.arrived, document.deleted, document.acl_changed, "
                                                   "document.reindex")
