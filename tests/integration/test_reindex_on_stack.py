"""Index generations end to end, on a stack of its own (a switch changes what every query reads), through the
CLI as an operator runs it and plain Kafka clients as integrators publish: a rebuild with another chunk size
while documents keep arriving and one is deleted, refusals that change nothing, the switch, an audit of the new
generation, a rollback and the drop of the old one."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import confluent_kafka
import pytest

from infra.settings import Settings
from infra.stores.lance import LanceVectorIndex
from infra.stores.sqlite import SqliteDocumentStore
from ragbus.supervisor import Stack
from schemas.topics import TOPICS
from tests.integration.helpers import cli, wait_until

# a stack of its own and a dozen CLI processes, each loading the settings and some the model: ~1 minute on
# 2 idle cores, several on busy ones
pytestmark = [pytest.mark.broker, pytest.mark.timeout(600)]

ANIMALS = {
    "owl": "Owls turn their heads 270 degrees. " * 30,
    "giraffe": "Giraffes have seven neck vertebrae, like people. " * 30,
    "octopus": "An octopus has three hearts and blue blood. " * 30,
    "kafka": "Kafka consumer groups share the partitions of a topic. " * 30,
}


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Settings]]:
    mp = pytest.MonkeyPatch()
    for key in ("RAGBUS_KAFKA_BOOTSTRAP_SERVERS", "RAGBUS_KAFKA_TOPIC_PREFIX", "RAGBUS_ANTHROPIC_API_KEY",
                "ANTHROPIC_API_KEY"):
        mp.delenv(key, raising=False)
    mp.setenv("RAGBUS_DATA_DIR", str(tmp_path_factory.mktemp("reindex")))
    with Stack(Settings()) as s:
        yield s, s.child_settings()
    mp.undo()


def generations(settings: Settings) -> dict[str, dict[str, object]]:
    done = cli(settings, "reindex", "status", "--json")
    assert done.returncode == 0, done.stderr
    return {row["name"]: row for row in json.loads(done.stdout)}


DOCS = ("owl.txt", "giraffe.txt", "kafka.txt", "octopus.txt", "penguin")


def ids_in(settings: Settings, table_generation: str, *docs: str) -> set[str]:
    index = LanceVectorIndex(settings.data_dir / "lance", 384, generation=table_generation)
    try:
        return {c for doc in docs or DOCS for c, _ in index.chunk_versions("default", doc)}
    finally:
        index.close()


def refused(done: subprocess.CompletedProcess[str], says: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], done.stderr


def test_rebuild_switch_rollback_and_drop_through_the_bus(own_stack: tuple[Stack, Settings], tmp_path: Path) -> None:
    _, settings = own_stack
    for name, text in ANIMALS.items():
        (tmp_path / f"{name}.txt").write_text(text)
    done = cli(settings, "ingest", *[str(tmp_path / f"{n}.txt") for n in ANIMALS], "--wait", cwd=tmp_path)
    assert done.returncode == 0, done.stderr

    refused(cli(settings, "reindex", "rollback"), "no old generation is kept")
    refused(cli(settings, "reindex", "switch"), "no generation is building")
    refused(cli(settings, "reindex", "start", "--model", "/nowhere/no-model"), "cannot be loaded")
    assert list(generations(settings)) == ["g1"]

    done = cli(settings, "reindex", "start", "--chunk-size", "64", "--chunk-overlap", "8")
    assert done.returncode == 0, done.stderr
    assert "g2 is building" in done.stderr and "4 documents queued" in done.stderr
    refused(cli(settings, "reindex", "start", "--chunk-size", "80"), "g2")

    # live while it builds: a new document, and a delete, published by an integrator's plain client
    producer = confluent_kafka.Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    topic = settings.kafka.topic_prefix + TOPICS.documents.name
    producer.produce(topic, key=b"default/penguin", value=json.dumps({
        "type": "document.arrived", "document_id": "penguin", "title": "Penguins",
        "text": "Emperor penguins huddle to keep warm through the Antarctic winter. " * 30}).encode())
    producer.produce(topic, key=b"default/octopus.txt", value=json.dumps({
        "type": "document.deleted", "document_id": "octopus.txt"}).encode())
    producer.flush(30)

    store = SqliteDocumentStore(settings.data_dir / "ragbus.sqlite")
    wait_until(lambda: store.get_document("default", "penguin") is not None
               and store.progress("g2").caught_up and store.progress("g2").total == 4, 180, "g2 caught up")
    watched = cli(settings, "reindex", "status", "--watch")
    assert watched.returncode == 0 and "has caught up" in watched.stderr, watched.stderr

    # the audit: every current document in g2 with g2's chunking, the deleted one in neither
    for doc in ("owl.txt", "giraffe.txt", "kafka.txt", "penguin"):
        assert ids_in(settings, "g2", doc), doc
        assert ids_in(settings, "g1", doc), doc
        assert len(ids_in(settings, "g2", doc)) > len(ids_in(settings, "g1", doc)), doc  # 64-token chunks
    assert not ids_in(settings, "g2", "octopus.txt") and not ids_in(settings, "g1", "octopus.txt")

    def cited(question: str) -> set[str]:
        done = cli(settings, "ask", question, "--json", "--retrieve-only")
        assert done.returncode == 0, done.stderr
        ids = {c["chunk_id"] for c in json.loads(done.stdout)["citations"]}
        assert ids, question
        return ids

    assert cited("How do penguins keep warm?") <= ids_in(settings, "g1")
    done = cli(settings, "reindex", "switch")
    assert done.returncode == 0, done.stderr
    assert {n: r["state"] for n, r in generations(settings).items()} == {"g1": "old", "g2": "serving"}
    time.sleep(1.0)  # answerers look for a switch every 0.5 s
    assert cited("How do penguins keep warm?") <= ids_in(settings, "g2")

    refused(cli(settings, "reindex", "start", "--chunk-size", "80"), "drop-old")
    assert cli(settings, "reindex", "rollback").returncode == 0
    time.sleep(1.0)
    assert cited("How do penguins keep warm?") <= ids_in(settings, "g1")
    assert cli(settings, "reindex", "rollback").returncode == 0  # and forward again
    done = cli(settings, "reindex", "drop-old")
    assert done.returncode == 0 and "g1 dropped" in done.stderr, done.stderr
    assert list(generations(settings)) == ["g2"]
    assert not (settings.data_dir / "lance" / "chunks.lance").exists()
    time.sleep(1.0)
    assert cited("Which animal has seven neck vertebrae?") <= ids_in(settings, "g2")
    status = cli(settings, "status")
    assert "generation g2 serving" in status.stdout, status.stdout
