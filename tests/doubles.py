"""Small, deterministic test doubles for ports that are slow or external (not for stores: those run for
real through the contract suites)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from kernel.stage import Out
from schemas.topics import TopicSpec


class HashEmbedder:
    """Bag-of-words hashing embedder: texts sharing words get similar vectors; counts its calls."""

    name = "hash-test"

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim
        self.calls: list[list[str]] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
        self.calls.append(list(texts))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "little")
                out[i, h % self.dim] += 1.0
            norm = np.linalg.norm(out[i])
            out[i] = out[i] / norm if norm else out[i]
        return out

    @property
    def embedded(self) -> int:
        return sum(len(c) for c in self.calls)


class DictCache:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        return {k: self.data[k] for k in keys if k in self.data}

    def put_many(self, items: dict[str, bytes]) -> None:
        self.data.update(items)


class Outputs(list[Out]):
    """Collects what a stage returns or emits, for assertions."""

    def of(self, spec: TopicSpec) -> list[Any]:
        return [o.event for o in self if o.topic.name == spec.name]
