"""Hostile message values, as a careless or malicious publisher would put them on ragbus's input topics.

`values(good)` is a hypothesis strategy of raw bytes built around one valid event of the topic (so the
mutations reach every field's validation, not only the JSON parser): arbitrary bytes, deeply nested
JSON, very large JSON, wrong types in every field, unknown enum values, huge strings and control
characters. Only values the reader must refuse are generated (`is_refused` filters the rare mutation
that happens to stay valid), so a test can demand a dead letter for each.
"""

from __future__ import annotations

import json
import random
from typing import Any

from hypothesis import strategies as st
from pydantic import BaseModel

from engine.serde import decode
from kernel.errors import PoisonMessageError
from schemas.topics import TopicSpec

#: Hostile values stay below the topics' 2 MiB message limit, which the broker enforces before ragbus reads.
HUGE = 600_000

_ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
_CONTROL = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=31), min_size=1, max_size=8)


def is_refused(spec: TopicSpec, raw: bytes) -> bool:
    try:
        decode(spec, raw)
    except PoisonMessageError:
        return True
    return False


def _nested(depth: int, opener: str) -> bytes:
    if opener == "[":
        return b"[" * depth + b"]" * depth
    if opener == "{":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b"[" * depth  # never closed


def _mutate(good: dict[str, Any], field: str, value: Any) -> bytes:
    return json.dumps(good | {field: value}, ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def _field_mutation(draw: st.DrawFn, good: dict[str, Any]) -> bytes:
    field = draw(st.sampled_from(sorted(good)))
    kind = draw(st.sampled_from(["wrong type", "unknown enum", "huge string", "control characters", "missing"]))
    if kind == "missing":
        return json.dumps({k: v for k, v in good.items() if k != field}).encode()
    value: Any
    if kind == "wrong type":
        value = draw(_ANY_JSON.filter(lambda v: type(v) is not type(good[field])))
    elif kind == "unknown enum":
        value = draw(st.text(min_size=1, max_size=30))
    elif kind == "huge string":
        value = "x" * draw(st.integers(70_000, HUGE))
    else:
        value = str(good[field]) + draw(_CONTROL)
    return _mutate(good, field, value)


def values(spec: TopicSpec, good: BaseModel) -> st.SearchStrategy[bytes]:
    """Raw values the reader of `spec` must dead-letter; `good` is one valid event of the topic."""
    doc = json.loads(good.model_dump_json())
    raw = st.one_of(
        st.binary(max_size=2_000),
        st.tuples(st.integers(33, 20_000), st.sampled_from(["[", "{", "unclosed"])).map(lambda t: _nested(*t)),
        st.integers(HUGE, 2 * HUGE).map(lambda n: b'{"padding": "' + b"y" * n + b'"'),  # large and broken
        _ANY_JSON.map(lambda v: json.dumps(v).encode()),
        _field_mutation(doc),
        st.just(json.dumps(doc).encode().replace(b'"', b"'")),  # not JSON, almost
        st.just(b'{"a": ' + b"9" * 5_000 + b"}"),  # an integer over Python's digit limit
        st.just(b'{"text": "\x00\x01\x02"}'),  # raw control characters inside a JSON string
    )
    return raw.filter(lambda v: is_refused(spec, v))


def sample(spec: TopicSpec, rng: random.Random) -> bytes:
    """One hostile value for `spec`, drawn with `rng` (no hypothesis engine: for the chaos harness)."""
    doc = json.loads(GOOD[spec.name].model_dump_json())
    while True:
        kind = rng.randrange(6)
        if kind == 0:
            value = rng.randbytes(rng.randrange(1, 2000))
        elif kind == 1:
            value = _nested(rng.randrange(33, 20_000), rng.choice(["[", "{", "unclosed"]))
        elif kind == 2:
            value = b'{"padding": "' + b"y" * rng.randrange(HUGE, 2 * HUGE) + b'"'
        else:
            field = rng.choice(sorted(doc))
            wrong: Any = rng.choice([None, 12345, -1.5, True, [1, 2], {"x": 1}, "not-an-enum",
                                     "x" * rng.randrange(70_000, HUGE), str(doc[field]) + "\x00\x1b"])
            value = _mutate(doc, field, wrong)
        if is_refused(spec, value):
            return value


def _good_events() -> dict[str, BaseModel]:
    from schemas.events import (
    Chunk,
    ChunksEmbedded,
    ChunksProduced,
    DocumentArrived,
    EmbeddedChunk,
    QueryRequested,
    content_hash,
)

    part = {"document_id": "doc", "version": 1, "content_hash": content_hash(b"x"), "part": 0, "parts": 1,
            "total_chunks": 1}
    return {
        "documents.v1": DocumentArrived(document_id="doc", title="A title", text="Some text."),
        "chunks.v1": ChunksProduced(**part, chunks=[Chunk(index=0, text="Some text.", section_path=["A"])]),
        "embedded.v1": ChunksEmbedded(**part, model="m", dim=4, chunks=[EmbeddedChunk(
            index=0, text="Some text.", vector_b64=EmbeddedChunk.encode_vector([0.5, 0.5, 0.5, 0.5]))]),
        "queries.v1": QueryRequested(query_id="q1", text="What?"),
    }


#: One valid event per input topic, by the topic's logical name.
GOOD = _good_events()
