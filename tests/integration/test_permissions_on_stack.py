"""Permissions end to end, through the bus, with plain confluent-kafka clients as an integrator uses them: two
tenants whose groups share names, documents with overlapping ACLs, a revocation published while queries keep
coming. No answer cites a document of another tenant or one its asker may not read; once the revocation's
`about: acl` status is out, no answer cites the revoked document for the revoked group."""

from __future__ import annotations

import json
import time
import uuid

import confluent_kafka
import pytest

from infra.settings import Settings
from ragbus.supervisor import Stack
from schemas.topics import TOPICS

pytestmark = pytest.mark.broker

TEXTS = {
    "roadmap": "The product roadmap for next year: offline sync, a new search page and audit exports.",
    "salaries": "Salary bands and the yearly pay review, decided by the remuneration committee.",
    "handbook": "The employee handbook: holidays, expenses, travel and the yearly pay review calendar.",
}
ACLS = {"roadmap": ["group:eng", "group:product"], "salaries": ["group:hr"], "handbook": None}


def topic(settings: Settings, name: str) -> str:
    return settings.kafka.topic_prefix + name


def test_two_tenants_overlapping_groups_and_a_revocation_mid_stream(stack: tuple[Stack, Settings]) -> None:
    _, settings = stack
    run = uuid.uuid4().hex[:6]
    tenants = [f"perm-a-{run}", f"perm-b-{run}"]
    producer = confluent_kafka.Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})

    def publish(name: str, key: str, event: dict[str, object]) -> None:
        producer.produce(topic(settings, name), key=key.encode(), value=json.dumps(event).encode())

    for tenant in tenants:
        for doc, text in TEXTS.items():
            publish(TOPICS.documents.name, f"{tenant}/{doc}", {
                "type": "document.arrived", "tenant": tenant, "document_id": doc, "title": doc, "text": text,
                "acl": ACLS[doc]})
    producer.flush(30)

    answers = confluent_kafka.Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers,
                                        "group.id": f"perm-{run}", "auto.offset.reset": "latest"})
    statuses = confluent_kafka.Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers,
                                         "group.id": f"perm-status-{run}", "auto.offset.reset": "earliest"})
    answers.subscribe([topic(settings, TOPICS.answers.name)])
    statuses.subscribe([topic(settings, TOPICS.status.name)])
    indexed: set[tuple[str, str]] = set()
    deadline = time.monotonic() + 120
    while len(indexed) < 6 and time.monotonic() < deadline:
        for m in statuses.consume(100, 0.5):
            st = json.loads(m.value()) if m.error() is None else {}
            if st.get("tenant") in tenants and st.get("status") == "indexed" and st.get("about") == "content":
                indexed.add((st["tenant"], st["document_id"]))
    assert len(indexed) == 6, f"only {sorted(indexed)} indexed"
    answers.consume(100, 2.0)  # joined the group: answers from now on are ours to read

    askers = {"eng": ["group:eng"], "hr": ["group:hr"], "product": ["group:product", "user:zoe"], "none": []}
    asked: dict[str, tuple[str, str, float]] = {}  # query id -> (tenant, asker, when published)

    def ask(round_: int) -> None:
        for tenant in tenants:
            for who, principals in askers.items():
                qid = f"{tenant}/{who}/{round_}"
                publish(TOPICS.queries.name, qid, {
                    "type": "query.requested", "tenant": tenant, "query_id": qid, "retrieve_only": True, "top_k": 5,
                    "text": "roadmap salary pay review handbook", "principals": principals})
                asked[qid] = (tenant, who, time.monotonic())
        producer.flush(10)

    revoked_at: float | None = None
    in_force_at: float | None = None
    got: dict[str, set[str]] = {}
    received_at: dict[str, float] = {}
    for round_ in range(12):
        ask(round_)
        if round_ == 4:  # mid-stream: the product group loses the roadmap in the first tenant only
            publish(TOPICS.documents.name, f"{tenants[0]}/roadmap", {
                "type": "document.acl_changed", "tenant": tenants[0], "document_id": "roadmap",
                "acl": ["group:eng"], "acl_version": 1})
            producer.flush(10)
            revoked_at = time.monotonic()
        for m in answers.consume(100, 0.5):
            if m.error() is None and (a := json.loads(m.value()))["query_id"] in asked:
                got[a["query_id"]] = {c["document_id"] for c in a["citations"]}
                received_at[a["query_id"]] = time.monotonic()
        for m in statuses.consume(100, 0.1):
            st = json.loads(m.value()) if m.error() is None else {}
            if st.get("tenant") == tenants[0] and st.get("about") == "acl" and in_force_at is None:
                assert st["status"] == "indexed", st
                in_force_at = time.monotonic()
        time.sleep(0.3)
    deadline = time.monotonic() + 60
    while len(got) < len(asked) and time.monotonic() < deadline:
        for m in answers.consume(100, 0.5):
            if m.error() is None and (a := json.loads(m.value()))["query_id"] in asked:
                got[a["query_id"]] = {c["document_id"] for c in a["citations"]}
    answers.close()
    statuses.close()
    assert len(got) == len(asked), f"{len(asked) - len(got)} queries unanswered"
    assert revoked_at is not None and in_force_at is not None, "the revocation was never reported in force"

    for qid, cited in got.items():
        tenant, who, when = asked[qid]
        principals = set(askers[who])
        allowed = {doc for doc, acl in ACLS.items() if acl is None or principals & set(acl)}
        assert cited <= allowed, f"{qid} read {cited - allowed}"  # never beyond the ACL at any time
        assert "handbook" in cited, qid  # documents without an ACL stay everyone's
        if tenant == tenants[0] and who == "product" and when > in_force_at:
            assert "roadmap" not in cited, f"{qid}, asked after the revocation was in force, still cites it"
        if tenant == tenants[1] and who == "product":
            assert "roadmap" in cited, qid  # the other tenant's group:product is another group
    print(f"revocation in force {in_force_at - revoked_at:.2f} s after it was published")
