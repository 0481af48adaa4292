"""Index generations: the index and everything derived from a model or chunking setting, under one name.

A generation (`g1`, `g2`, ...) is one vector index (a LanceDB table, a Weaviate collection) built with one
`Build`: the embedding model, its prefixes and the chunk sizes, recorded beside it in the document store. One
generation is *serving*: every query reads exactly that one (its index, its query model, its answer-cache
entries). While a new one is *building*, every document event reaches both, so the new one stays current
as it catches up; after `ragbus reindex switch` the previous one is kept as *old* (still current, for
`ragbus reindex rollback`) until `ragbus reindex drop-old`. At most two generations are live at a time: a
new build starts only when no old one is kept.

A generation is rebuilt from what ragbus holds, without the publishers: the chunker keeps every document's
content in the document store's content-addressed store, and `ragbus reindex start` publishes a
`document.reindex` event per current document onto the documents topic, so the rebuild runs on the same
stages (and their replicas) as any ingest, ordered per document with its live events (docs/operations.md,
"Index generations").

Per generation the store keeps, per document, the highest version that generation has completely indexed
(`mark_indexed`). A version is reported `indexed` (status row and event) once the *serving* generation has it;
a building generation has caught up when every document whose current version is indexed has that version
(or a newer one) in it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Generic, Protocol, TypeVar

from schemas.events import FIRST_GENERATION, GENERATION_PATTERN

#: The first generation: the index as it was before generations (its table and collection keep their names).
FIRST = FIRST_GENERATION
NAME_PATTERN = re.compile(GENERATION_PATTERN)


class State(StrEnum):
    BUILDING = "building"
    SERVING = "serving"
    #: The generation that served before the last switch: still kept current, for a rollback.
    OLD = "old"


@dataclass(frozen=True)
class Build:
    """What a generation's index is built with: every setting its vectors or chunks depend on."""

    model: str
    query_prefix: str = ""
    passage_prefix: str = ""
    chunk_size: int = 200
    chunk_overlap: int = 32

    def differences(self, other: Build) -> list[str]:
        """`name: mine -> other's` for every setting that differs."""
        return [f"{f.name}: {getattr(self, f.name)!r} -> {getattr(other, f.name)!r}"
                for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(other, f.name)]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Build:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})


@dataclass(frozen=True)
class Generation:
    name: str
    build: Build
    state: State
    created_at: datetime
    #: Documents queued for the rebuild when it started (0 for the first generation, built by ingests).
    queued: int = 0


@dataclass(frozen=True)
class Progress:
    """How far a generation is: of the `total` documents whose current version is indexed, `done` have that
    version (or a newer one) in the generation."""

    done: int
    total: int

    @property
    def caught_up(self) -> bool:
        return self.done >= self.total


class GenerationConflict(Exception):
    """The generations are not in the state the change needs; the message says what to do instead."""


def suffix(name: str) -> str:
    """What a generation adds to the name of its index (table, collection): nothing for the first."""
    return "" if name == FIRST else f"_{name}"


def live(generations: list[Generation]) -> list[Generation]:
    """Every generation that receives document events, the serving one first."""
    order = {State.SERVING: 0, State.BUILDING: 1, State.OLD: 2}
    return sorted(generations, key=lambda g: order[g.state])


def serving(generations: list[Generation]) -> Generation:
    for g in generations:
        if g.state is State.SERVING:
            return g
    raise GenerationConflict("no generation is serving: run any ragbus stage once to record the first")


def in_state(generations: list[Generation], state: State) -> Generation | None:
    return next((g for g in generations if g.state is state), None)


class GenerationStore(Protocol):
    """The generations and their progress, beside the documents (SQLite table, MongoDB collection). Every change
    of state is one atomic write: a query never sees two serving generations or none."""

    def generations(self) -> list[Generation]:
        """Every recorded generation (empty before the first stage ever ran)."""

    def ensure_first(self, build: Build) -> list[Generation]:
        """Record `g1`, serving with `build`, unless a generation exists; return the generations. Concurrent
        callers converge on one record."""

    def start_generation(self, build: Build, queued: int) -> Generation:
        """Record a new generation, building, named after every name ever used (a dropped generation's name is never
        used again: late writes for it cannot count as the new one's). Raises GenerationConflict while one is
        building or an old one is kept."""

    def set_queued(self, name: str, queued: int) -> None:
        """Raises GenerationConflict for a name not recorded."""

    def switch(self, name: str) -> None:
        """`name` (building) serves; the serving one becomes old. Raises GenerationConflict otherwise. It does not
        check that `name` has caught up: the caller does (`progress`), as `ragbus reindex switch` does."""

    def rollback(self) -> str:
        """The old generation serves again and the serving one becomes old (a swap); returns the one now serving.
        Raises GenerationConflict when no old generation is kept."""

    def drop_generation(self, name: str) -> None:
        """Forget a building or old generation: its record, its progress and its chunk rows. Raises
        GenerationConflict for the serving one."""

    def mark_indexed(self, name: str, tenant: str, document_id: str, version: int) -> None:
        """`name` has every chunk of `version` of the document (kept as the highest version so marked)."""

    def indexed_version(self, name: str, tenant: str, document_id: str) -> int | None: ...

    def progress(self, name: str) -> Progress:
        """Of the documents whose current row is `indexed`, how many `name` has at that version or newer."""

    def behind(self, name: str, limit: int, after: tuple[str, str] | None = None) -> list[tuple[str, str]]:
        """(tenant, document_id) of indexed documents `name` does not have at their current version, in key
        order after `after`: what a resumed rebuild re-publishes."""


T = TypeVar("T")


# The rules of a change of generations, shared by the adapters: each takes the generations as recorded, inside the
# adapter's atomic change, and raises GenerationConflict saying what to do.

def _named(generations: list[Generation], name: str) -> Generation:
    found = next((g for g in generations if g.name == name), None)
    if found is None:
        raise GenerationConflict(f"no generation {name} is recorded (`ragbus status` lists them)")
    return found


def refuse_start(generations: list[Generation]) -> None:
    serving(generations)
    building, old = in_state(generations, State.BUILDING), in_state(generations, State.OLD)
    if building is not None:
        raise GenerationConflict(
            f"generation {building.name} is building: switch to it once it has caught up (`ragbus reindex switch`)"
            " or cancel it (`ragbus reindex cancel`) before starting another")
    if old is not None:
        raise GenerationConflict(
            f"generation {old.name} is kept as the old one: drop it (`ragbus reindex drop-old`) or go back to it"
            " (`ragbus reindex rollback`) before starting another")


def refuse_switch(generations: list[Generation], name: str) -> None:
    target = _named(generations, name)
    if target.state is not State.BUILDING:
        raise GenerationConflict(f"generation {name} is {target.state.value}, not building: only a building"
                                 " generation can be switched to (`ragbus reindex start` builds one)")
    serving(generations)


def refuse_rollback(generations: list[Generation]) -> str:
    """The generation a rollback makes serve."""
    old = in_state(generations, State.OLD)
    if old is None:
        raise GenerationConflict("no old generation is kept: nothing to roll back to")
    return old.name


def refuse_drop(generations: list[Generation], name: str) -> None:
    if _named(generations, name).state is State.SERVING:
        raise GenerationConflict(f"generation {name} is serving and cannot be dropped: only a building generation"
                                 " (`ragbus reindex cancel`) or the old one (`ragbus reindex drop-old`) can be")


def recorded(store: GenerationStore, build: Build) -> Callable[[], list[Generation]]:
    """The store's generations, recording the first (serving with `build`) when there is none yet."""
    return lambda: store.generations() or store.ensure_first(build)


class Lanes(Generic[T]):
    """A stage's view of the live generations, each with what the stage opened for it (an index, a chunker, a
    model), refreshed from the store at most every `refresh_s` (0: on every `refresh`, i.e. every batch). What
    belongs to a generation that is no longer live is closed. Opening is lazy and kept: two generations with
    the same build share nothing but the store."""

    def __init__(self, source: Callable[[], list[Generation]], open_: Callable[[Generation], T],
                 close: Callable[[T], None] = lambda _: None, refresh_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`source`: the recorded generations (`recorded(store, build)` in a stage)."""
        self._source = source
        self._open = open_
        self._close = close
        self._refresh_s = refresh_s
        self._clock = clock
        self._at = -1e18
        self._lock = threading.Lock()
        self._generations: list[Generation] = []
        self._opened: dict[str, T] = {}

    def refresh(self) -> list[Generation]:
        """The live generations, serving first, re-read from the store when due."""
        with self._lock:
            now = self._clock()
            if now - self._at >= self._refresh_s or not self._generations:
                self._generations = live(self._source())
                self._at = now
                names = {g.name for g in self._generations}
                for name in [n for n in self._opened if n not in names]:
                    self._close(self._opened.pop(name))
            return self._generations

    @classmethod
    def fixed(cls, value: T, build: Build | None = None) -> Lanes[T]:
        """One generation, the first, serving with `value`: a stage used on its own (tests, benchmarks)."""
        only = [Generation(FIRST, build or Build(model=""), State.SERVING, datetime.now(UTC))]
        lanes = cls(lambda: only, lambda _: value, refresh_s=float("inf"))
        lanes.refresh()
        return lanes

    def recorded(self, name: str) -> bool:
        """Whether `name` is live now, read from the source at once (not the view of the last refresh)."""
        return any(g.name == name for g in self._source())

    def get(self, name: str) -> T | None:
        """What is opened for the live generation `name` (None: not live, or not known yet at this refresh)."""
        with self._lock:
            generation = next((g for g in self._generations if g.name == name), None)
            if generation is None:
                return None
            if name not in self._opened:
                self._opened[name] = self._open(generation)
            return self._opened[name]

    def serving(self) -> tuple[Generation, T]:
        generation = serving(self.refresh())
        opened = self.get(generation.name)
        assert opened is not None
        return generation, opened

    def each(self) -> list[tuple[Generation, T]]:
        """Every live generation with what is opened for it, serving first."""
        out = []
        for g in self.refresh():
            opened = self.get(g.name)
            if opened is not None:
                out.append((g, opened))
        return out

    def opened(self) -> list[T]:
        with self._lock:
            return list(self._opened.values())

    def close(self) -> None:
        with self._lock:
            for opened in self._opened.values():
                self._close(opened)
            self._opened.clear()
