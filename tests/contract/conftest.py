"""Adapters under contract. Each suite runs against every adapter this machine can run."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

DIM = 8


# A vector index factory is a context manager that yields `open(**kw)`: each call opens another adapter on
# the same backend (as another process would), so the suite can check what a fresh reader sees; `kw` goes to
# the adapter (`generation=`, `model=`: another generation's index in the same place).

@contextlib.contextmanager
def _lance(tmp: Path):  # type: ignore[no-untyped-def]
    from infra.stores.lance import LanceVectorIndex

    yield lambda **kw: LanceVectorIndex(tmp / "lance", DIM, **kw)


def _sqlite(tmp: Path):  # type: ignore[no-untyped-def]
    from infra.stores.sqlite import SqliteDocumentStore

    return SqliteDocumentStore(tmp / "store.sqlite")


def _mongomock_database() -> tuple[object, str]:
    """A mongomock client and a database name. Shim: pymongo >= 4.11 passes `sort=` to bulk operations,
    which mongomock 4.3 does not accept (`bulk_write(UpdateOne(..., upsert=True))` fails with "unexpected keyword
    argument 'sort'"); the shim drops it (ragbus never sorts bulk writes)."""
    import mongomock
    from mongomock.collection import BulkOperationBuilder

    for name in ("add_replace", "add_update"):
        original = getattr(BulkOperationBuilder, name)
        if not getattr(original, "_ragbus_shim", False):
            def shim(self, *args, _orig=original, sort=None, **kw):  # type: ignore[no-untyped-def]
                return _orig(self, *args, **kw)
            shim._ragbus_shim = True  # type: ignore[attr-defined]
            setattr(BulkOperationBuilder, name, shim)
    return mongomock.MongoClient(), "ragbus_test"


def _mongomock(tmp: Path):  # type: ignore[no-untyped-def]
    from infra.stores.mongo import MongoDocumentStore

    return MongoDocumentStore(*_mongomock_database())


@contextlib.contextmanager
def _weaviate(tmp: Path):  # type: ignore[no-untyped-def]
    """Weaviate through the in-process double (tests/weaviate_double.py), with the real client."""
    from infra.settings import WeaviateSettings
    from infra.stores.weaviate import WeaviateVectorIndex, connect
    from tests.weaviate_double import WeaviateDouble

    with WeaviateDouble() as double:
        settings = WeaviateSettings(url=double.url, grpc_port=double.grpc_port, timeout_s=10)
        yield lambda **kw: WeaviateVectorIndex(connect(settings), settings.collection, DIM, **kw)


@contextlib.contextmanager
def _weaviate_container(tmp: Path, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Real Weaviate (integration tier): a fresh collection per test."""
    import uuid

    from infra.settings import WeaviateSettings
    from infra.stores.weaviate import WeaviateVectorIndex, connect

    url, grpc_port = request.getfixturevalue("weaviate_container")
    name = f"C{uuid.uuid4().hex}"
    yield lambda **kw: WeaviateVectorIndex(connect(WeaviateSettings(url=url, grpc_port=grpc_port)), name, DIM, **kw)


def _nx(tmp: Path, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """MongoDB over a socket, through nx-27017: a fresh database per test."""
    from infra.stores.mongo import MongoDocumentStore

    return MongoDocumentStore(*mongo_database("nx-27017", request))  # type: ignore[arg-type]


def _mongodb_container(tmp: Path, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Real MongoDB (integration tier): a fresh database per test."""
    import uuid

    from pydantic import SecretStr

    from infra.settings import MongoSettings
    from infra.stores.mongo import MongoDocumentStore, connect

    client = connect(MongoSettings(uri=SecretStr(request.getfixturevalue("mongodb_uri"))))
    return MongoDocumentStore(client, f"t{uuid.uuid4().hex}")


VECTOR_INDEXES = {"lancedb": _lance, "weaviate-double": _weaviate, "weaviate-container": _weaviate_container}
DOCUMENT_STORES = {"sqlite": _sqlite, "mongomock": _mongomock, "nx-27017": _nx,
                   "mongodb-container": _mongodb_container}
NEEDS_DOCKER = {"weaviate-container", "mongodb-container"}
#: Factories that take the request too (for a session fixture), without the integration mark.
NEEDS_REQUEST = NEEDS_DOCKER | {"nx-27017"}


def _params(adapters: dict[str, object]) -> list[object]:
    return [pytest.param(name, marks=pytest.mark.integration) if name in NEEDS_DOCKER else name
            for name in sorted(adapters)]


def _make(factories: dict[str, object], name: str, tmp: Path, request: pytest.FixtureRequest) -> object:
    factory = factories[name]
    return factory(tmp, request) if name in NEEDS_REQUEST else factory(tmp)  # type: ignore[operator]


@pytest.fixture(params=_params(VECTOR_INDEXES))
def index_opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., object]]:
    """Opens adapters on one backend; every adapter opened is closed at the end."""
    opened: list[object] = []
    with _make(VECTOR_INDEXES, request.param, tmp_path, request) as open_one:  # type: ignore[attr-defined]
        def opener(**kw: object) -> object:
            opened.append(open_one(**kw))
            return opened[-1]
        yield opener
        for adapter in opened:
            adapter.close()  # type: ignore[attr-defined]


@pytest.fixture
def index(index_opener: Callable[..., object]) -> object:
    return index_opener()


@pytest.fixture(params=_params(DOCUMENT_STORES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    adapter = _make(DOCUMENT_STORES, request.param, tmp_path, request)
    yield adapter
    adapter.close()


@pytest.fixture(scope="session")
def nx_27017(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One nx-27017 server (a MongoDB wire-protocol server pymongo talks to over a socket) for the session; each
    test gets a database of its own (`mongo_database`): its URI."""
    import subprocess
    import sys

    from engine.broker import free_port, wait_for_port

    port = free_port()
    log = tmp_path_factory.mktemp("nx") / "nx.log"
    with log.open("wb") as out:
        server = subprocess.Popen([str(Path(sys.executable).parent / "nx-27017"), "--db", "memory", "-p", str(port)],
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, 30)
        yield f"mongodb://127.0.0.1:{port}/?directConnection=true"
    finally:
        server.terminate()
        server.wait(10)


def mongo_database(backend: str, request: pytest.FixtureRequest) -> tuple[object, str]:
    """A MongoDB client and a fresh database on `backend`: "mongomock" (in process) or "nx-27017" (over a socket)."""
    if backend == "mongomock":
        return _mongomock_database()
    import uuid

    from pydantic import SecretStr

    from infra.settings import MongoSettings
    from infra.stores.mongo import connect

    client = connect(MongoSettings(uri=SecretStr(request.getfixturevalue("nx_27017")), timeout_ms=5000))
    return client, f"t{uuid.uuid4().hex}"
