from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.settings import Settings
from ragbus.supervisor import Stack
from tests.https_server import HttpsServer


@pytest.fixture(scope="session")
def content_sources(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HttpsServer, Path]]:
    """Where the stack may read documents by URL: a loopback HTTPS server with its own CA, and a directory."""
    tmp = tmp_path_factory.mktemp("content")
    root = tmp / "root"
    root.mkdir()
    with HttpsServer(tmp) as server:
        yield server, root


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory,
          content_sources: tuple[HttpsServer, Path]) -> Iterator[tuple[Stack, Settings]]:
    """The whole stack as `ragbus up` runs it (own local broker, stage processes, real model), shared by the
    end-to-end, bad-input and guide suites; they use distinct document ids. It may read content_url from
    `content_sources`."""
    mp = pytest.MonkeyPatch()
    data = tmp_path_factory.mktemp("stack")
    for key in ("RAGBUS_KAFKA_BOOTSTRAP_SERVERS", "RAGBUS_KAFKA_TOPIC_PREFIX", "RAGBUS_ANTHROPIC_API_KEY",
                "ANTHROPIC_API_KEY"):
        mp.delenv(key, raising=False)
    mp.setenv("RAGBUS_DATA_DIR", str(data))
    server, root = content_sources
    mp.setenv("RAGBUS_FETCH_ALLOWED_URLS", server.url("/"))
    mp.setenv("RAGBUS_FETCH_FILE_ROOTS", str(root))
    mp.setenv("RAGBUS_FETCH_CA_BUNDLE", str(server.ca_file))
    mp.setenv("RAGBUS_FETCH_ALLOW_PRIVATE_ADDRESSES", "true")  # the test server is on loopback
    with Stack(Settings()) as s:
        yield s, s.child_settings()
    mp.undo()
