"""Adapters under contract. Each suite runs against every adapter this machine can run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

DIM = 8


def _lance(tmp: Path):  # type: ignore[no-untyped-def]
    from infra.lance_index import LanceVectorIndex

    return LanceVectorIndex(tmp / "lance", DIM)


def _sqlite(tmp: Path):  # type: ignore[no-untyped-def]
    from infra.sqlite_store import SqliteDocumentStore

    return SqliteDocumentStore(tmp / "store.sqlite")


VECTOR_INDEXES = {"lancedb": _lance}
DOCUMENT_STORES = {"sqlite": _sqlite}


@pytest.fixture(params=sorted(VECTOR_INDEXES))
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    adapter = VECTOR_INDEXES[request.param](tmp_path)
    yield adapter
    adapter.close()


@pytest.fixture(params=sorted(DOCUMENT_STORES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    adapter = DOCUMENT_STORES[request.param](tmp_path)
    yield adapter
    adapter.close()
