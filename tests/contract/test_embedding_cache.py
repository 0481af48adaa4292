"""The EmbeddingCache contract: every cache backend (SQLite, MongoDB) passes it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from kernel.ports import EmbeddingCache

from .conftest import _mongomock_database


@pytest.fixture(params=["sqlite", "mongomock"])
def cache(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EmbeddingCache]:
    if request.param == "sqlite":
        from infra.stores.sqlite import SqliteEmbeddingCache

        c = SqliteEmbeddingCache(tmp_path / "cache.sqlite")
        yield c
        c.close()
    else:
        from infra.stores.mongo import MongoEmbeddingCache

        yield MongoEmbeddingCache(*_mongomock_database())


def vector(seed: int) -> bytes:
    return np.random.default_rng(seed).random(8, dtype=np.float32).astype("<f4").tobytes()


def test_missing_keys_are_absent_not_errors(cache: EmbeddingCache) -> None:
    assert cache.get_many([]) == {}
    assert cache.get_many(["nothing-here"]) == {}


def test_put_then_get_returns_the_same_bytes(cache: EmbeddingCache) -> None:
    items = {f"k{i}": vector(i) for i in range(5)}
    cache.put_many(items)
    assert cache.get_many(["k0", "k3", "absent"]) == {"k0": items["k0"], "k3": items["k3"]}


def test_puts_are_idempotent(cache: EmbeddingCache) -> None:
    cache.put_many({"k": vector(1)})
    cache.put_many({"k": vector(1)})
    cache.put_many({})
    assert cache.get_many(["k"]) == {"k": vector(1)}


def test_many_keys_at_once(cache: EmbeddingCache) -> None:
    items = {f"key-{i}-ü": vector(i) for i in range(1200)}  # more than one SQL statement's parameters
    cache.put_many(items)
    assert cache.get_many(list(items)) == items
