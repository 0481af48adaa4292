"""The permission part of the VectorIndex and DocumentStore contracts: every adapter filters by the asker's
visibility tokens inside its query (before ranking), re-stamps a document's entries in place, and keeps the
ACL with the highest order key."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from kernel.permissions import ARRIVED, CHANGED, PUBLIC, PUBLIC_ONLY, Acl, AclOrder, document_tokens, query_tokens
from kernel.ports import DocumentStore, Level, SearchRequest, VectorIndex

from .test_vector_index import rec, sec, vec

ALICE = query_tokens("t1", ["user:alice"], deny_unlisted=True)
ENG = query_tokens("t1", ["group:eng"], deny_unlisted=True)


def restricted(doc: str, text: str, v: np.ndarray, principals: list[str] | None, idx: int = 0):  # type: ignore[no-untyped-def,type-arg]
    return replace(rec(doc, 1, idx, text, v), acl=document_tokens("t1", principals))


def both(index: VectorIndex, text: str, v: np.ndarray, visible: tuple[str, ...], candidates: int = 5,  # type: ignore[type-arg]
         levels: tuple[Level, ...] = (Level.CHUNK,)) -> tuple[list[str], list[str]]:
    found = index.search("t1", SearchRequest(text=text, vector=v, candidates=candidates, levels=levels,
                                             visible=visible))
    return [h.document_id for h in found.dense], [h.document_id for h in found.keyword]


def test_a_search_reads_only_entries_the_asker_may_read(index: VectorIndex) -> None:
    assert index.upsert([
        restricted("hr", "salary bands for engineers", vec(0), ["user:alice", "group:hr"]),
        restricted("wiki", "salary of the build server", vec(0, 1), ["group:eng"]),
        restricted("open", "salary survey published", vec(1), None),
        restricted("locked", "salary secrets", vec(0), []),  # an empty ACL: nobody
    ]) == []
    dense, keyword = both(index, "salary", vec(0), ALICE)
    assert set(dense) == set(keyword) == {"hr"}
    dense, keyword = both(index, "salary", vec(0), ENG)
    assert set(dense) == set(keyword) == {"wiki"}
    dense, keyword = both(index, "salary", vec(0), query_tokens("t1", ["group:eng"], deny_unlisted=False))
    assert set(dense) == set(keyword) == {"wiki", "open"}
    dense, keyword = both(index, "salary", vec(0), PUBLIC_ONLY)
    assert set(dense) == set(keyword) == {"open"}
    assert both(index, "salary", vec(0), ()) == ([], [])  # deny-by-default and no principals: nothing


def test_the_filter_runs_before_ranking_so_few_visible_documents_are_still_found(index: VectorIndex) -> None:
    """Twenty better matches the asker may not read, one worse match it may: a top-3 search finds it. A filter
    applied to the top k afterwards would return nothing."""
    hidden = [replace(rec(f"h{i}", 1, 0, f"kafka partitions offsets {i}", vec(0)),
                      acl=document_tokens("t1", ["group:other"])) for i in range(20)]
    mine = restricted("mine", "a note that mentions kafka once", vec(0, 1, 2), ["user:alice"])
    assert index.upsert([*hidden, mine]) == []
    dense, keyword = both(index, "kafka partitions offsets", vec(0), ALICE, candidates=3)
    assert dense == ["mine"] and keyword == ["mine"]


def test_section_chunks_follow_the_same_filter(index: VectorIndex) -> None:
    entries = [restricted("hr", "first chunk", vec(0), ["user:alice"]),
               replace(sec("hr", 1, 0, "the section lead", vec(0)), acl=document_tokens("t1", ["user:alice"]))]
    assert index.upsert(entries) == []
    assert [h.text for h in index.section_chunks("t1", [("hr", 1, 0)], 1, ALICE)] == ["first chunk"]
    assert index.section_chunks("t1", [("hr", 1, 0)], 1, ENG) == []
    assert index.section_chunks("t1", [("hr", 1, 0)], 1, PUBLIC_ONLY) == []


def test_set_acl_re_stamps_every_entry_of_the_document_in_place(index: VectorIndex) -> None:
    assert index.upsert([restricted("doc", "quarterly numbers", vec(0), ["user:alice"]),
                         replace(rec("doc", 2, 0, "quarterly numbers, revised", vec(0)),
                                 acl=document_tokens("t1", ["user:alice"])),
                         replace(sec("doc", 1, 0, "quarterly numbers", vec(0)),
                                 acl=document_tokens("t1", ["user:alice"])),
                         restricted("other", "quarterly plans", vec(0), ["user:alice"])]) == []
    index.set_acl("t1", "doc", document_tokens("t1", ["group:eng"]))
    assert both(index, "quarterly", vec(0), ALICE, levels=(Level.CHUNK, Level.SECTION)) == (["other"], ["other"])
    dense, keyword = both(index, "quarterly", vec(0), ENG, levels=(Level.CHUNK, Level.SECTION))
    assert sorted(dense) == sorted(keyword) == ["doc", "doc", "doc"]  # both versions and the section entry
    index.set_acl("t1", "doc", PUBLIC_ONLY)
    assert set(both(index, "quarterly", vec(0), PUBLIC_ONLY)[0]) == {"doc"}
    assert index.count("t1") == 3  # nothing written twice, nothing lost


def test_entries_without_an_acl_are_public(index: VectorIndex) -> None:
    assert index.upsert([rec("plain", 1, 0, "plain text", vec(0))]) == []  # ChunkRecord's default
    assert both(index, "plain", vec(0), PUBLIC_ONLY) == (["plain"], ["plain"])
    assert both(index, "plain", vec(0), ALICE) == ([], [])


def test_the_acl_with_the_highest_order_key_stays(store: DocumentStore) -> None:
    assert store.get_acl("t1", "d") is None
    first = Acl(("user:alice",), AclOrder(0, ARRIVED, 5))
    assert store.apply_acl("t1", "d", first) == first
    revoked = Acl(("group:hr",), AclOrder(1, CHANGED))
    assert store.apply_acl("t1", "d", revoked) == revoked
    # a later content update carrying its (older) acl does not re-open the document
    assert store.apply_acl("t1", "d", Acl(("user:alice",), AclOrder(0, ARRIVED, 9))) == revoked
    # a duplicate, and a reordered older change, change nothing
    assert store.apply_acl("t1", "d", revoked) == revoked
    assert store.apply_acl("t1", "d", Acl(None, AclOrder(1, ARRIVED, 99))) == revoked
    public = Acl(None, AclOrder(2, CHANGED))
    assert store.apply_acl("t1", "d", public) == public
    assert store.get_acl("t1", "d") == public
    assert store.get_acl("t2", "d") is None  # per tenant
    assert PUBLIC in document_tokens("t1", public.principals)
