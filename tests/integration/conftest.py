from __future__ import annotations

from collections.abc import Iterator

import pytest

from infra.settings import Settings
from ragbus.supervisor import Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Settings]]:
    """The whole stack as `ragbus up` runs it (own local broker, stage processes, real model), shared by the
    end-to-end and bad-input suites; they use distinct document ids."""
    mp = pytest.MonkeyPatch()
    data = tmp_path_factory.mktemp("stack")
    for key in ("RAGBUS_KAFKA_BOOTSTRAP_SERVERS", "RAGBUS_KAFKA_TOPIC_PREFIX", "RAGBUS_ANTHROPIC_API_KEY",
                "ANTHROPIC_API_KEY"):
        mp.delenv(key, raising=False)
    mp.setenv("RAGBUS_DATA_DIR", str(data))
    with Stack(Settings()) as s:
        yield s, s.child_settings()
    mp.undo()
