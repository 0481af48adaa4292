"""Adapters under contract. Each suite runs against every adapter this machine can run."""

from __future__ import annotations

import contextlib
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


def _mongomock(tmp: Path):  # type: ignore[no-untyped-def]
    """MongoDB through mongomock. Shim: pymongo >= 4.11 passes `sort=` to bulk operations, which mongomock
    4.3 does not accept (ENVIRONMENT.md); the shim drops it (ragbus never sorts bulk writes)."""
    import mongomock
    from mongomock.collection import BulkOperationBuilder

    for name in ("add_replace", "add_update"):
        original = getattr(BulkOperationBuilder, name)
        if not getattr(original, "_ragbus_shim", False):
            def shim(self, *args, _orig=original, sort=None, **kw):  # type: ignore[no-untyped-def]
                return _orig(self, *args, **kw)
            shim._ragbus_shim = True  # type: ignore[attr-defined]
            setattr(BulkOperationBuilder, name, shim)
    from infra.mongo_store import MongoDocumentStore

    return MongoDocumentStore(mongomock.MongoClient(), "ragbus_test")


@contextlib.contextmanager
def _weaviate(tmp: Path):  # type: ignore[no-untyped-def]
    """Weaviate through the in-process double (tests/weaviate_double.py), with the real client."""
    from infra.settings import WeaviateSettings
    from infra.weaviate_index import WeaviateVectorIndex, connect
    from tests.weaviate_double import WeaviateDouble

    with WeaviateDouble() as double:
        settings = WeaviateSettings(url=double.url, grpc_port=double.grpc_port, timeout_s=10)
        yield WeaviateVectorIndex(connect(settings), settings.collection, DIM)


VECTOR_INDEXES = {"lancedb": _lance, "weaviate-double": _weaviate}
DOCUMENT_STORES = {"sqlite": _sqlite, "mongomock": _mongomock}


@pytest.fixture(params=sorted(VECTOR_INDEXES))
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    made = VECTOR_INDEXES[request.param](tmp_path)
    if isinstance(made, contextlib.AbstractContextManager):
        with made as adapter:
            yield adapter
            adapter.close()
        return
    yield made
    made.close()


@pytest.fixture(params=sorted(DOCUMENT_STORES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    adapter = DOCUMENT_STORES[request.param](tmp_path)
    yield adapter
    adapter.close()
