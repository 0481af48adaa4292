"""What every vector index adapter does the same way before it speaks its backend's language: metadata as
filterable terms, the vector-shape check, and the metadata filter of a search as (field, value) conditions.

LanceDB (lance.py) and Weaviate (weaviate.py) each render these in their own query language; the terms and
conditions themselves are written once here, so both backends store and filter metadata identically.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from kernel.ports import ChunkRecord, Metadata, WriteFailure

#: Filter keys that are columns of their own; every other key is matched as a metadata term.
COLUMNS = ("document_id", "source")


def meta_terms(metadata: Metadata) -> list[str]:
    """A chunk's metadata as `key=<json value>` terms: stored in a string-array field, matched exactly."""
    return [f"{k}={json.dumps(v)}" for k, v in sorted(metadata.items())]


def checked(chunks: Sequence[ChunkRecord], dim: int) -> tuple[list[ChunkRecord], list[WriteFailure]]:
    """The chunks to write, one per id (the last wins: a batch may carry a redelivered event twice, and a
    backend refuses one id twice in one write), and a failure for each whose vector has the wrong shape."""
    kept, failures = [], []
    for c in {c.chunk_id: c for c in chunks}.values():
        if c.vector.shape == (dim,):
            kept.append(c)
        else:
            failures.append(WriteFailure(c.chunk_id, f"vector has shape {c.vector.shape}, expected ({dim},)"))
    return kept, failures


@dataclass(frozen=True)
class Condition:
    """One equality a search must meet: a column equal to `value`, or the metadata terms holding `value`."""

    field: Literal["document_id", "source", "meta"]
    value: str


def conditions(filters: Metadata | None) -> list[Condition]:
    """A search's metadata filter (key -> value, all must match) as conditions, in key order."""
    out = []
    for key, value in sorted((filters or {}).items()):
        if key == "document_id":
            out.append(Condition("document_id", str(value)))
        elif key == "source":
            out.append(Condition("source", str(value)))
        else:
            out.append(Condition("meta", meta_terms({key: value})[0]))
    return out
