"""Query and passage prefixes, as a wrapper around any Embedder.

Models such as e5 ("query: ", "passage: ") and bge (an instruction in front of queries only) were trained
with a prefix telling a question from a passage; without it they lose much of their quality. The prefix
is a property of the model, not of a backend, so it wraps whatever Embedder the settings built: the
embedder stage embeds passages through `with_prefix(model, passage_prefix)`, the answerer embeds
questions through `with_prefix(model, query_prefix)`.

A prefixed embedder has its own name (the model's name and the prefix), so vector caches and the vector
index tell its vectors from the bare model's.
"""

from __future__ import annotations

from collections.abc import Sequence

from kernel.ports import Embedder, Vectors


class Prefixed:
    """An Embedder that puts `prefix` in front of every text before the wrapped model sees it."""

    def __init__(self, inner: Embedder, prefix: str) -> None:
        self.inner = inner
        self.prefix = prefix
        self.name = f"{inner.name} prefix={prefix!r}"
        self.dim = inner.dim
        limit = getattr(inner, "max_tokens", None)
        if limit is not None:
            self.max_tokens = limit

    def embed(self, texts: Sequence[str]) -> Vectors:
        return self.inner.embed([self.prefix + t for t in texts])


def with_prefix(model: Embedder, prefix: str) -> Embedder:
    """`model` itself when there is no prefix (so the default model's vectors and cache keys stay as they were)."""
    return Prefixed(model, prefix) if prefix else model


def passage_identity(model: str, passage_prefix: str) -> str:
    """What identifies the vectors stored in an index: the model and the prefix its passages were embedded with."""
    return f"{model} prefix={passage_prefix!r}" if passage_prefix else model
