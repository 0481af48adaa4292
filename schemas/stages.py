"""The stage registry, its declarative half: every stage of the pipeline is declared once, here.

A declaration says what a stage is on the bus: its name, the topic it reads (as the consumer group
`<prefix><name>`), the topics it writes, what it writes outside Kafka, the runtime it runs on and the process it
shares under `ragbus up`. Whatever lists stages derives from `PIPELINE`: each stage's dead-letter topic and so
the list of every topic, the AsyncAPI operations (schemas/asyncapi.py), the metrics families a process exports
(infra/ops/metrics.py), consumer-group lag and dead letters (engine/), and in the composition root `ragbus
worker`'s dispatch, the supervisor's process layout and the factory bound to each declaration
(ragbus/registry.py). A `kernel.stage.Stage` can only be built for a declared stage, publishes only on the topics
its declaration lists (engine/delivery.py), and each runtime refuses a stage declared for the other.

Adding a stage: its declaration here, its function (streams/ or consumers/), and its factory bound to the
declaration in ragbus/registry.py. No I/O in this module.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

from .topics import TOPICS, TopicSpec, dead_letter_topic


class Runtime(StrEnum):
    """What a stage runs on."""

    #: A faust-streaming agent: Kafka -> Kafka, alone in its process.
    FAUST = "faust-streaming"
    #: A confluent-kafka consumer: Kafka -> the outside world, in a thread; several may share a process.
    CONSUMER = "confluent-kafka"


@dataclass(frozen=True)
class StageSpec:
    """What a stage is on the bus."""

    name: str
    #: The topic it consumes, as the consumer group `<prefix><name>`.
    reads: TopicSpec
    #: The topics it publishes on, its dead-letter topic aside.
    writes: tuple[TopicSpec, ...]
    runtime: Runtime
    #: The process it runs in under `ragbus up`: stages that name the same process share one.
    process: str
    #: What it writes outside Kafka, in words.
    effects: str = ""
    #: The topic that carries its one reply to each event it reads (AsyncAPI's `reply`), if it replies.
    reply: TopicSpec | None = None
    #: Whether someone waits on its effect (a document becoming searchable, a query's answer). Stages that are
    #: not (the status sink: clients read statuses from the topic, not from its store) fetch with a long wait,
    #: which against the local broker is most of the idle CPU (Settings.fetch_wait_ms).
    waited_on: bool = True

    @property
    def dead_letters(self) -> TopicSpec:
        return dead_letter_topic(self.name)

    def check_writes(self, topic: TopicSpec) -> None:
        """Raises for a topic this stage is not declared to write: what a stage publishes is its contract."""
        if topic not in self.writes:
            raise ValueError(f"the {self.name} stage published on {topic.name}, which its declaration "
                             "(schemas/stages.py) does not list")


class Pipeline:
    """The declared stages, in pipeline order."""

    def __init__(self, *stages: StageSpec) -> None:
        self._by_name = {s.name: s for s in stages}
        if len(self._by_name) != len(stages):
            raise ValueError(f"two stages share a name: {[s.name for s in stages]}")
        for s in stages:
            if s.reply is not None and s.reply not in s.writes:
                raise ValueError(f"the {s.name} stage replies on {s.reply.name}, which it does not write")
            shared = [t.name for t in stages if t.process == s.process]
            if s.runtime is Runtime.FAUST and len(shared) > 1:
                raise ValueError(f"{s.name} is a faust stage and runs alone in its process, not with {shared}")

    def __iter__(self) -> Iterator[StageSpec]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def __getitem__(self, name: str) -> StageSpec:
        if name not in self._by_name:
            raise KeyError(f"unknown stage {name!r}: choose from {', '.join(self.names())}")
        return self._by_name[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._by_name)

    def declares(self, spec: StageSpec) -> bool:
        """True for a declared stage: the declaration itself, not a look-alike built elsewhere."""
        return self._by_name.get(spec.name) is spec

    def processes(self) -> tuple[tuple[str, ...], ...]:
        """The process layout of `ragbus up`: the stages of each process, in pipeline order."""
        groups: dict[str, list[str]] = {}
        for s in self:
            groups.setdefault(s.process, []).append(s.name)
        return tuple(tuple(names) for names in groups.values())

    def writers(self, topic: TopicSpec) -> list[StageSpec]:
        return [s for s in self if topic in s.writes]

    def topics(self) -> list[TopicSpec]:
        """Every topic: those events travel on, then each stage's dead letters."""
        return TOPICS.events() + [s.dead_letters for s in self]


CHUNKER = StageSpec("chunker", TOPICS.documents, (TOPICS.chunks, TOPICS.status), Runtime.FAUST, "chunker")
EMBEDDER = StageSpec("embedder", TOPICS.chunks, (TOPICS.embedded, TOPICS.status), Runtime.FAUST, "embedder")
#: The indexer also writes the documents topic: a `document.reindex` for a building index generation that a
#: version was chunked without (consumers/indexer.py).
INDEXER = StageSpec("indexer", TOPICS.embedded, (TOPICS.status, TOPICS.documents), Runtime.CONSUMER, "indexer",
                    effects="vector index, document store")
#: A light sink: it shares the indexer's process under `ragbus up`.
STATUS = StageSpec("status", TOPICS.status, (), Runtime.CONSUMER, "indexer", effects="document store",
                   waited_on=False)
ANSWERER = StageSpec("answerer", TOPICS.queries, (TOPICS.answers, TOPICS.answer_deltas), Runtime.CONSUMER,
                     "answerer", effects="answer log, answer cache", reply=TOPICS.answers)

PIPELINE = Pipeline(CHUNKER, EMBEDDER, INDEXER, STATUS, ANSWERER)
