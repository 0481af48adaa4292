"""The stage registry: every stage that exists is declared (schemas/stages.py) and built by its factory
(ragbus/registry.py); nothing builds a stage, a consumer group or a faust agent around it."""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from engine import consumer_runner, faust_runner
from engine.delivery import BatchPolicy
from engine.records import SourceRecord
from engine.serde import encode, headers_for
from infra.ops.metrics import Metrics
from infra.settings import Settings
from kernel.errors import ConfigurationError
from kernel.stage import Out, Stage
from ragbus import registry
from schemas import stages
from schemas.events import AnswerDelta, DocumentStatus, Status
from schemas.stages import CHUNKER, INDEXER, PIPELINE, STATUS, Runtime, StageSpec
from schemas.topics import TOPICS
from tests.conftest import ROOT

#: The packages whose code runs in production (tests and bench build what they like).
PRODUCTION = ("schemas", "kernel", "chunking", "retrieval", "infra", "engine", "streams", "consumers", "ragbus")


def test_every_declared_stage_has_one_factory_and_every_factory_a_declaration() -> None:
    registry.check()
    assert set(registry.REGISTRY) == set(PIPELINE.names())
    assert all(PIPELINE[name] is r.spec for name, r in registry.REGISTRY.items())


def test_a_declaration_without_its_factory_stops_ragbus_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(registry.REGISTRY, "status")
    with pytest.raises(ConfigurationError, match=r"no factory for \['status'\]"):
        registry.check()


@pytest.mark.parametrize("name", PIPELINE.names())
def test_each_factory_builds_the_stage_it_is_bound_to(name: str, settings_factory) -> None:  # type: ignore[no-untyped-def]
    settings = settings_factory(RAGBUS_EMBEDDER_NICE="0")  # (the embedder's factory renices its process)
    published: list[Out] = []
    ctx = registry.Context(settings, Metrics(), None, published.append)
    stage = registry.build(name, ctx)
    assert stage.spec is PIPELINE[name]
    assert bool(ctx.upkeep) == (name == "indexer")  # the indexer's process keeps its index in shape


def test_a_stage_that_is_not_declared_cannot_be_built() -> None:
    rogue = StageSpec("rogue", TOPICS.status, (), Runtime.CONSUMER, "rogue")
    with pytest.raises(ValueError, match="'rogue' stage is not declared"):
        Stage(rogue, lambda events: [[] for _ in events])
    with pytest.raises(ValueError, match="not declared"):  # a look-alike of a declared stage is no declaration
        Stage(dataclasses.replace(STATUS), lambda events: [[] for _ in events])


def test_each_runtime_refuses_a_stage_declared_for_the_other() -> None:
    settings = Settings()

    def policy(spec: StageSpec) -> BatchPolicy[Any]:
        return BatchPolicy(settings, Stage(spec, lambda events: [[] for _ in events]), Metrics())

    with pytest.raises(ConfigurationError, match="indexer stage is declared to run on confluent-kafka"):
        faust_runner.build_app(settings, policy(INDEXER), Metrics())
    with pytest.raises(ConfigurationError, match="chunker stage is declared to run on faust-streaming"):
        consumer_runner.ConsumerRunner(settings, policy(CHUNKER), None)  # type: ignore[arg-type]


def test_a_stage_publishes_only_on_the_topics_it_declares() -> None:
    """An output on a topic missing from the declaration is a bug in the stage: its event fails (dead-lettered
    and counted as a crash), and nothing reaches the undeclared topic."""
    ev = DocumentStatus(document_id="d", version=1, status=Status.CHUNKED, stage="chunker")
    stray = Out(TOPICS.answer_deltas, b"q", AnswerDelta(query_id="q", seq=0, text="x"))
    stage = Stage(STATUS, lambda events: [[stray] for _ in events])
    metrics = Metrics()
    record = SourceRecord("ragbus.status.v1", 0, 7, b"default/d", encode(ev), headers_for(ev))
    done = BatchPolicy(Settings(), stage, metrics).process([record], lambda _: True)
    assert done is not None and done.dead_lettered == 1
    assert [s.topic for s in done.sends] == ["ragbus.dlq.status.v1"]
    assert metrics.registry.get_sample_value("ragbus_stage_crashes_total", {"stage": "status"}) == 1


def _calls(names: set[str]) -> Iterator[tuple[str, ast.Call]]:
    """(file, call) for every call in the production packages to a function or method named in `names`."""
    for package in PRODUCTION:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call):
                    func = node.func
                    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                    if name in names:
                        yield str(path.relative_to(ROOT)), node


def _where(calls: Iterator[tuple[str, ast.Call]]) -> set[str]:
    return {path for path, _ in calls}


def test_stages_are_declared_in_one_place_and_built_by_the_stage_modules() -> None:
    assert _where(_calls({"StageSpec"})) == {"schemas/stages.py"}
    declared = {name for name, value in vars(stages).items() if isinstance(value, StageSpec)}
    built = list(_calls({"Stage"}))
    assert {path.split("/")[0] for path, _ in built} == {"streams", "consumers"}
    for path, call in built:  # each for a declaration, by its name
        assert isinstance(call.args[0], ast.Name) and call.args[0].id in declared, path


def test_only_the_runners_run_consumer_groups_and_faust_agents() -> None:
    """A Kafka consumer in a group, or a faust agent, outside the two runners would be a stage nobody declared
    (the dead-letter replay's group is a tool's, not a stage's)."""
    grouped = {path for path, call in _calls({"make_consumer"})
               if not (isinstance(call.args[1], ast.Constant) and call.args[1].value is None)}
    assert grouped == {"engine/consumer_runner.py", "engine/deadletters.py"}
    assert _where(_calls({"subscribe"})) == {"engine/consumer_runner.py", "engine/deadletters.py"}
    assert _where(_calls({"agent", "FaustApp"})) == {"engine/faust_runner.py"}
    assert _where(_calls({"Consumer"})) == {"engine/clients.py"}


def test_the_process_layout_of_ragbus_up_follows_the_declarations() -> None:
    from ragbus.supervisor import PROCESSES

    assert PROCESSES == PIPELINE.processes() == (("chunker",), ("embedder",), ("indexer", "status"), ("answerer",))
    with pytest.raises(ValueError, match="faust stage and runs alone"):
        stages.Pipeline(CHUNKER, dataclasses.replace(INDEXER, process="chunker"))


def test_the_architecture_table_shows_the_declarations() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    rows = [line for line in text.split("## Stages and topics")[1].split("\n##")[0].splitlines()
            if line.startswith("| ") and not line.startswith("| stage ")]
    assert rows == [f"| {s.name} | {s.runtime} | {s.process} | `{s.reads.name}` | "
                    + ", ".join([f"`{t.name}`" for t in s.writes] + ([s.effects] if s.effects else [])) + " |"
                    for s in PIPELINE]
