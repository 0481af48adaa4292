"""Permissions at the edge: the contract's bounds on `acl` and `principals`, the visibility tokens, an ACL change
keyed as another document, the status an ACL change reports, and the CLI's --acl / --principal."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from chunking.splitter import Chunker
from consumers.indexer import Indexer
from engine.delivery import BatchPolicy
from engine.records import SourceRecord
from engine.serde import decode
from infra.models.embedder import load_tokenizer
from infra.ops.metrics import Metrics
from infra.stores.sqlite import SqliteDocumentStore
from kernel.errors import PoisonMessageError
from kernel.permissions import NOBODY, PUBLIC, document_tokens, fingerprint, query_tokens, token
from schemas.events import DocumentAclChanged, DocumentArrived, DocumentStatus, QueryRequested
from schemas.topics import TOPICS
from streams import chunker


def arrived(**fields: Any) -> bytes:
    return json.dumps({"type": "document.arrived", "tenant": "acme", "document_id": "hr/pay.md", "text": "Pay."}
                      | fields).encode()


@pytest.mark.parametrize(("acl", "reason"), [
    ("group:hr", "field 'acl'"),  # not a list
    ([1, 2], "field 'acl[0]'"),  # not strings
    (["x" * 257], "field 'acl[0]'"),  # over-long principal
    (["group:\nhr"], "field 'acl[0]'"),  # not printable
    ([f"user:{i}" for i in range(1025)], "field 'acl'"),  # too many entries
])
def test_a_bad_acl_is_refused_with_a_reason_that_names_the_field(acl: object, reason: str) -> None:
    with pytest.raises(PoisonMessageError) as caught:
        decode(TOPICS.documents, arrived(acl=acl))
    assert reason in str(caught.value)


def test_the_bounds_are_inclusive_and_principals_follow_the_same_rules() -> None:
    ok = decode(TOPICS.documents, arrived(acl=[f"user:{i}" for i in range(1024)]))
    assert isinstance(ok, DocumentArrived) and len(ok.acl or []) == 1024
    assert QueryRequested(text="q", principals=["u" * 256]).principals == ["u" * 256]
    with pytest.raises(ValidationError):
        QueryRequested(text="q", principals=["u" * 257])
    with pytest.raises(ValidationError):
        DocumentAclChanged(document_id="d", acl=["group:hr"], acl_version=0)  # changes start at 1
    change = decode(TOPICS.documents, json.dumps({"type": "document.acl_changed", "tenant": "acme",
                                                  "document_id": "d", "acl": None, "acl_version": 3}).encode())
    assert isinstance(change, DocumentAclChanged) and change.acl is None


def test_tokens_are_per_tenant_and_never_the_principal_in_clear() -> None:
    assert token("acme", "group:hr") != token("globex", "group:hr")
    assert "group:hr" not in token("acme", "group:hr")
    assert document_tokens("acme", None) == (PUBLIC,)
    assert document_tokens("acme", []) == (NOBODY,)  # nobody may read it
    assert PUBLIC in query_tokens("acme", [], deny_unlisted=False)
    assert query_tokens("acme", [], deny_unlisted=True) == ()
    assert NOBODY not in query_tokens("acme", ["-", "*"], deny_unlisted=False)[1:]  # principals are hashed
    assert fingerprint(["b", "a"]) == fingerprint(["a", "b", "a"])


def record(offset: int, key: bytes | None, value: bytes) -> SourceRecord:
    return SourceRecord("ragbus.documents.v1", 0, offset, key, value, [])


def test_an_acl_change_keyed_as_another_document_is_dead_lettered_saying_why(settings_factory) -> None:  # type: ignore[no-untyped-def]
    """Content events arriving under another key are re-keyed (tests/unit/test_keys.py); a permission change is
    not: it is refused, with a failed `about: acl` status for whoever waits on it."""
    change = json.dumps({"type": "document.acl_changed", "tenant": "acme", "document_id": "hr/pay.md",
                         "acl": ["group:hr"], "acl_version": 2}).encode()
    policy = BatchPolicy(settings_factory(), chunker.stage(Chunker(load_tokenizer("all-MiniLM-L6-v2"), 64, 8),
                                                           lambda ref: b""), Metrics())
    done = policy.process([record(0, b"globex/hr/pay.md", change), record(1, None, change),
                           record(2, b"acme/hr/pay.md", change)], lambda s: True)
    assert done is not None and done.dead_lettered == 1
    dead = [s for s in done.sends if s.topic.endswith("dlq.chunker.v1") or ".dlq." in s.topic]
    assert len(dead) == 1
    reason = dict(dead[0].headers)["ragbus-dlq-reason"].decode()
    assert "'globex/hr/pay.md' is not this event's own key 'acme/hr/pay.md'" in reason
    statuses = [DocumentStatus.model_validate_json(s.value) for s in done.sends if s.topic.endswith("status.v1")]
    assert [(st.about, st.status.value, st.version) for st in statuses] == [("acl", "failed", 2)]
    passed = [s for s in done.sends if s.topic.endswith("chunks.v1")]
    assert [s.key for s in passed] == [b"acme/hr/pay.md", b"acme/hr/pay.md"]  # keyless and right: handled


def test_an_acl_change_reports_in_force_or_why_not(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.contract.conftest import _lance  # the real embedded index, as the stack runs it

    with _lance(tmp_path) as open_index:
        index = open_index()
        store = SqliteDocumentStore(tmp_path / "db.sqlite")
        indexer = Indexer(index, store, Metrics())
        newer = DocumentAclChanged(tenant="acme", document_id="d", acl=["group:hr"], acl_version=5)
        older = DocumentAclChanged(tenant="acme", document_id="d", acl=["group:eng"], acl_version=4)
        results = indexer.handle([newer, older, newer])  # a change for a document not indexed yet is kept
        reports = [o.event for r in results if isinstance(r, list) for o in r]
        assert [(r.about, r.status.value, r.version) for r in reports] == [
            ("acl", "indexed", 5), ("acl", "failed", 4), ("acl", "indexed", 5)]
        assert "acl_version 5" in reports[1].error and "higher acl_version" in reports[1].error
        assert store.get_acl("acme", "d") is not None and store.get_acl("acme", "d").principals == ("group:hr",)
        assert store.get_document("acme", "d") is None  # a report, not a document status
        index.close()
