"""Revocation latency through the bus (issue 25): seconds from publishing `document.acl_changed` that removes a
group from a document until a retrieve-only query by a member of that group no longer cites the document.

    python bench/acl_revocation.py [--documents 200] [--revocations 30] [--json]

Starts the stack (`ragbus up`'s processes, local broker) on a fresh data directory and talks to it from
outside, as an integrator would: plain confluent-kafka producer and consumer, JSON by hand, on the topics
(names from schemas/topics.py). Two tenants, `acme` and `globex`, each with half the documents; both use the
same group names (`group:eng`, `group:hr`, `group:sales`, `group:board`), every document lists two or three
of them, and the askers belong to overlapping groups.

1. Ingest: every document with its `acl`, until each one's `indexed` status is seen.
2. Revocations, one at a time: a document (of either tenant) listing `group:eng` and `group:hr`; the asker
   `user:erin` (principals `user:erin`, `group:eng`) first finds it (a retrieve-only query filtered to that
   document); then `document.acl_changed` drops `group:eng` (a higher `acl_version`); from the moment the
   producer's flush returns, the same query is asked again, one round every 50 ms, each with a new query id,
   until an answer cites nothing. Reported: that time (publish -> first answer without the document; an upper
   bound), publish -> the `acl` status, and a check that a member of the group kept (`group:hr`) still finds
   the document afterwards.
3. Isolation: every `globex` asker (with the very same principal strings) asks about every `acme` document
   and with unfiltered questions; no answer may cite an `acme` document (and the reverse).

Target (issue 25): revocation p95 <= 2 s on the embedded stack.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.corpus import percentile
from bench.report import emit, run_facts
from infra.ops import logs
from infra.settings import Settings
from ragbus.supervisor import Stack
from schemas.topics import TOPICS

TENANTS = ("acme", "globex")
GROUPS = ("group:eng", "group:hr", "group:sales", "group:board")
ROUND_S = 0.05
TOPICS_WORDS = ("kubernetes rollout", "payroll calendar", "quarterly pipeline", "board minutes", "incident review",
                "hiring plan", "vpn setup", "expense policy", "pricing sheet", "release checklist")


def documents(n: int) -> list[dict[str, Any]]:
    """n documents, alternately for each tenant, each listing two or three of the groups, overlapping; every
    fourth document of a tenant lists group:eng and group:hr (the revocation targets)."""
    out = []
    for i in range(n):
        tenant = TENANTS[i % 2]
        j = i // 2
        acl = [GROUPS[j % 4], GROUPS[(j + 1) % 4]] + ([GROUPS[(j + 2) % 4]] if j % 3 == 0 else [])
        topic = TOPICS_WORDS[j % len(TOPICS_WORDS)]
        out.append({"type": "document.arrived", "tenant": tenant, "document_id": f"{tenant}-wiki/page-{j:03d}",
                    "version": 1, "title": f"{tenant} {topic} page {j}", "content_type": "text/plain",
                    "text": f"This {tenant} page {j} is about the {topic}. It explains the {topic} step by step "
                            f"for the team, with owners, dates and the checklist number {j * 7 + 3}.",
                    "acl": acl, "acl_version": 1})
    return out


class Bus:
    """A plain producer, and a consumer reading answers and statuses into dictionaries by a reader thread."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        #: the topics' names on the broker (`ragbus.documents.v1`, ...: the prefix is RAGBUS_KAFKA_TOPIC_PREFIX)
        self.documents, self.queries = TOPICS.documents.physical(prefix), TOPICS.queries.physical(prefix)
        self.producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 0})
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"acl-bench-{uuid.uuid4().hex}",
                                   "auto.offset.reset": "earliest", "enable.auto.commit": False,
                                   "session.timeout.ms": 6000})
        self._consumer.subscribe([TOPICS.answers.physical(prefix), TOPICS.status.physical(prefix)])
        self.answers: dict[str, tuple[float, dict[str, Any]]] = {}
        self.statuses: list[tuple[float, dict[str, Any]]] = []
        self._cond = threading.Condition()
        self.failure: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            msg = self._consumer.poll(0.05)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.fatal():
                    self.failure = f"consumer error: {error}"
                    return
                continue  # e.g. a partition's end, or a topic not created yet: the client carries on
            event = json.loads(msg.value() or b"{}")
            with self._cond:
                if event.get("type") == "answer.generated":
                    self.answers.setdefault(event["query_id"], (time.perf_counter(), event))
                elif "status" in event:
                    self.statuses.append((time.perf_counter(), event))
                self._cond.notify_all()

    def send(self, topic: str, key: str, event: dict[str, Any]) -> float:
        self.producer.produce(topic, key=key, value=json.dumps(event))
        self.producer.flush()
        return time.perf_counter()

    def ask(self, tenant: str, principals: list[str], text: str, document_id: str | None = None,
            timeout: float = 30) -> dict[str, Any]:
        query: dict[str, Any] = {"type": "query.requested", "tenant": tenant, "query_id": uuid.uuid4().hex,
                                 "text": text, "top_k": 5, "retrieve_only": True, "principals": principals}
        if document_id:
            query["filters"] = {"document_id": document_id}
        self.send(self.queries, query["query_id"], query)
        return self.wait_answer(query["query_id"], timeout)[1]

    def wait_answer(self, query_id: str, timeout: float) -> tuple[float, dict[str, Any]]:
        with self._cond:
            if not self._cond.wait_for(lambda: query_id in self.answers, timeout):
                raise SystemExit(f"no answer to query {query_id} within {timeout} s")
            return self.answers[query_id]

    def answer_within(self, query_id: str, timeout: float) -> tuple[float, dict[str, Any]] | None:
        with self._cond:
            self._cond.wait_for(lambda: query_id in self.answers, timeout)
            return self.answers.get(query_id)

    def wait_status(self, match: Any, timeout: float) -> tuple[float, dict[str, Any]] | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for seen in self.statuses:
                    if match(seen[1]):
                        return seen
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


def ingest(bus: Bus, docs: list[dict[str, Any]]) -> float:
    started = time.perf_counter()
    for d in docs:
        bus.producer.produce(bus.documents, key=f"{d['tenant']}/{d['document_id']}", value=json.dumps(d))
    bus.producer.flush()
    for d in docs:
        final = bus.wait_status(lambda s, d=d: s["tenant"] == d["tenant"] and s["document_id"] == d["document_id"]
                                and s.get("about", "content") == "content" and s["status"] in ("indexed", "failed"),
                                600)
        if final is None or final[1]["status"] != "indexed":
            raise SystemExit(f"{d['document_id']} not indexed: {final} {bus.failure or ''}")
    return time.perf_counter() - started


def cites(answer: dict[str, Any], document_id: str) -> bool:
    return any(c["document_id"] == document_id for c in answer["citations"])


def revoke(bus: Bus, doc: dict[str, Any], acl_version: int) -> dict[str, Any]:
    tenant, doc_id = doc["tenant"], doc["document_id"]
    member, keeper = ["user:erin", "group:eng"], ["user:hal", "group:hr"]
    question = doc["title"]
    deadline = time.perf_counter() + 30
    while not cites(bus.ask(tenant, member, question, doc_id), doc_id):  # readable before: the precondition
        if time.perf_counter() > deadline:
            raise SystemExit(f"{doc_id} never visible to group:eng before its revocation")
        time.sleep(ROUND_S)
    change = {"type": "document.acl_changed", "tenant": tenant, "document_id": doc_id,
              "acl": [g for g in doc["acl"] if g != "group:eng"], "acl_version": acl_version}
    published = bus.send(bus.documents, f"{tenant}/{doc_id}", change)  # returns once the broker has it
    rounds = 0
    while True:
        rounds += 1
        answer_at, answer = bus.wait_answer(_ask_id(bus, tenant, member, question, doc_id), 30)
        if not cites(answer, doc_id):
            gone = answer_at - published
            break
        if time.perf_counter() - published > 60:
            raise SystemExit(f"{doc_id} still cited to group:eng 60 s after its revocation")
        time.sleep(ROUND_S)
    status = bus.wait_status(lambda s: s["tenant"] == tenant and s["document_id"] == doc_id
                             and s.get("about") == "acl" and s["version"] == acl_version, 30)
    kept = cites(bus.ask(tenant, keeper, question, doc_id), doc_id)
    again = cites(bus.ask(tenant, member, question, doc_id), doc_id)  # never re-opened
    return {"document_id": doc_id, "revoked_s": gone, "rounds": rounds,
            "status_s": None if status is None else status[0] - published,
            "status": None if status is None else status[1]["status"], "keeper_still_sees": kept,
            "reopened": again}


def _ask_id(bus: Bus, tenant: str, principals: list[str], text: str, document_id: str) -> str:
    query_id = uuid.uuid4().hex
    query = {"type": "query.requested", "tenant": tenant, "query_id": query_id, "text": text, "top_k": 5,
             "retrieve_only": True, "principals": principals, "filters": {"document_id": document_id}}
    bus.send(bus.queries, query_id, query)
    return query_id


def isolation(bus: Bus, docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Askers of each tenant, holding every group name, ask about every document of the other tenant (filtered
    to it) and the other tenant's titles unfiltered: no answer may cite the other tenant's document."""
    principals = ["user:erin", *GROUPS]
    asked = leaked = own_found = 0
    pending: list[tuple[str, str]] = []  # (query id, the asker's tenant)
    for n, d in enumerate(docs):
        if n % 10 == 0:  # ten documents' queries at a time: a client, not a flood
            bus.producer.flush()
            for qid, _ in pending[-20:]:
                bus.answer_within(qid, 60)
        other = next(t for t in TENANTS if t != d["tenant"])
        for filtered in (True, False):
            query: dict[str, Any] = {"type": "query.requested", "tenant": other, "query_id": uuid.uuid4().hex,
                                     "text": d["title"], "top_k": 5, "retrieve_only": True, "principals": principals}
            if filtered:
                query["filters"] = {"document_id": d["document_id"]}
            bus.producer.produce(bus.queries, key=query["query_id"], value=json.dumps(query))
            pending.append((query["query_id"], other))
    bus.producer.flush()
    unanswered = []
    for qid, tenant in pending:
        asked += 1
        got = bus.answer_within(qid, 60)
        if got is None:  # dead-lettered by the answerer (its dead-letter topic says why): no answer comes
            unanswered.append(qid)
            continue
        answer = got[1]
        leaked += sum(not c["document_id"].startswith(f"{tenant}-") for c in answer["citations"])
        own_found += bool(answer["citations"])
    return {"queries": asked, "citations_of_the_other_tenant": leaked, "answers_citing_own_documents": own_found,
            "unanswered": len(unanswered)}


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def dist(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": round(percentile(values, 50), 3), "p95": round(percentile(values, 95), 3),
            "max": round(max(values, default=float("nan")), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--documents", type=int, default=200)
    ap.add_argument("--revocations", type=int, default=30)
    ap.add_argument("--data-dir", type=Path, help="keep the data and logs here (default: a temporary directory)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    os.environ.pop("RAGBUS_KAFKA_BOOTSTRAP_SERVERS", None)
    os.environ.setdefault("RAGBUS_LOG_LEVEL", "WARNING")
    docs = documents(args.documents)
    targets = [d for d in docs if {"group:eng", "group:hr"} <= set(d["acl"])][:args.revocations]
    if len(targets) < args.revocations:
        raise SystemExit(f"only {len(targets)} documents to revoke: ask for more --documents")
    with tempfile.TemporaryDirectory(prefix="ragbus-acl-revocation-") as tmp:
        os.environ["RAGBUS_DATA_DIR"] = str(args.data_dir or tmp)
        settings = Settings()
        logs.configure(settings.log_level, settings.log_format, quiet_clients=True)
        with Stack(settings) as stack:
            say(f"stack up at {stack.bootstrap}")
            bus = Bus(stack.bootstrap, settings.kafka.topic_prefix)
            try:
                ingest_s = ingest(bus, docs)
                say(f"ingested {len(docs)} documents in {ingest_s:.1f} s")
                runs = []
                for d in targets:
                    runs.append(revoke(bus, d, acl_version=2))
                    say(f"revoked {d['document_id']}: {runs[-1]}")
                iso = isolation(bus, docs)
                say(f"isolation: {iso}")
            finally:
                bus.close()
    report = {"documents": len(docs), "ingest_s": round(ingest_s, 1),
              "revoked_publish_to_not_cited_s": dist([r["revoked_s"] for r in runs]),
              "revoked_publish_to_acl_status_s": dist([r["status_s"] for r in runs if r["status_s"] is not None]),
              "acl_status": sorted({str(r["status"]) for r in runs}),
              "keeper_group_still_sees": sum(r["keeper_still_sees"] for r in runs),
              "reopened_after_revocation": sum(r["reopened"] for r in runs),
              "probe_rounds_max": max(r["rounds"] for r in runs),
              "isolation": iso, "deny_unlisted": settings.acl.deny_unlisted, "embedder": settings.embedder.backend,
              **run_facts()}
    emit(report, args.json)


if __name__ == "__main__":
    main()
