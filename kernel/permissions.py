"""Document permissions: who may read what, as the index stores and filters it.

A document's ACL is a list of principal strings (`user:alice`, `group:eng`) or none. The index keeps, on every
entry of a document, its *visibility tokens*: one token per principal (a keyed hash of tenant and principal, so
principals never sit in the index in clear and a row's size is bounded), or the single token PUBLIC for a
document without an ACL. A query searches only entries holding one of *its* tokens: its principals' tokens,
plus PUBLIC unless the operator denies documents without an ACL. The filter runs inside the index query (a
LanceDB prefilter, a Weaviate filter), never on the top k afterwards, so a query that may read few documents
still gets its best k of those.

Which ACL is in force for a document is decided by an order key, independently of the content version:
`(acl_version, kind, content_version)`, highest wins, where kind is 1 for `document.acl_changed` and 0 for the
`acl` a `document.arrived` carries. So a later content update carrying an older ACL cannot re-open a document
whose access was revoked, an ACL change that arrives before its document is kept for it, and duplicates or
reordered changes converge on the same ACL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: The token of a document without an ACL (a hash is 32 hex digits, so no principal's token can equal it).
PUBLIC = "*"
#: What a query sees when nobody is asking: documents without an ACL.
PUBLIC_ONLY: tuple[str, ...] = (PUBLIC,)
#: The token of a document whose ACL is empty: no query ever holds it (stored instead of an empty list, which
#: not every backend can filter or update).
NOBODY = "-"

#: An ACL change's kind in the order key: at equal acl_version an explicit change beats a document's own acl.
ARRIVED, CHANGED = 0, 1


@dataclass(frozen=True, order=True)
class AclOrder:
    """The order of ACL statements about one document: the highest is in force."""

    acl_version: int
    kind: int
    content_version: int = 0


@dataclass(frozen=True)
class Acl:
    """The ACL in force for a document: `principals` None means none (readable by every query of the tenant,
    unless unlisted documents are denied); `order` is the statement it came from."""

    principals: tuple[str, ...] | None
    order: AclOrder


def token(tenant: str, principal: str) -> str:
    """A principal's visibility token within its tenant (the same principal in two tenants has two tokens)."""
    return hashlib.blake2b(f"{tenant}\x1f{principal}".encode(), digest_size=16).hexdigest()


def document_tokens(tenant: str, principals: Sequence[str] | None) -> tuple[str, ...]:
    """What a document's index entries hold: its principals' tokens, or PUBLIC when it has no ACL. An empty
    ACL holds only NOBODY: nobody may read the document."""
    if principals is None:
        return PUBLIC_ONLY
    return tuple(sorted({token(tenant, p) for p in principals})) or (NOBODY,)


def query_tokens(tenant: str, principals: Iterable[str], *, deny_unlisted: bool) -> tuple[str, ...]:
    """The tokens a query may read: its principals', and PUBLIC (documents without an ACL) unless denied."""
    own = sorted({token(tenant, p) for p in principals})
    return tuple(own) if deny_unlisted else (PUBLIC, *own)


def visible(entry_tokens: Iterable[str], allowed: Iterable[str]) -> bool:
    """Whether an entry is readable with these tokens (what the index filters evaluate)."""
    return not set(entry_tokens).isdisjoint(allowed)


def fingerprint(tokens: Iterable[str]) -> str:
    """A short digest of a set of tokens: keys answers by who may read their sources, and stands in for
    principals wherever they would otherwise be logged."""
    return hashlib.blake2b("\x1f".join(sorted(set(tokens))).encode(), digest_size=8).hexdigest()
