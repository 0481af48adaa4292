"""The machine-readable contract: the AsyncAPI document and the JSON Schemas are current, valid against
their official meta-schemas, complete (every topic, event type, key and header), and their examples
are events ragbus reads."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import pytest

from engine.records import SourceRecord, dead_letter
from engine.serde import decode, headers_for
from kernel.errors import PoisonMessageError
from schemas import generate
from schemas.examples import EXAMPLES
from schemas.headers import DLQ_PREFIX
from schemas.stages import CHUNKER, PIPELINE
from schemas.topics import TopicSpec
from tests.conftest import ROOT, make_variable

#: Installed by `make test` (Makefile: specs) from npm's @asyncapi/specs; never vendored.
SPECS = ROOT / ".tools" / "npm" / "node_modules" / "@asyncapi" / "specs" / "schemas" / "3.0.0.json"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return json.loads(generate.ASYNCAPI.read_text())


@pytest.fixture(scope="module")
def official() -> jsonschema.Draft7Validator:
    if not SPECS.exists():
        pytest.fail(f"the official AsyncAPI JSON Schema is missing at {SPECS}: run `make tools` "
                    "(npm install @asyncapi/specs)")
    schema = json.loads(SPECS.read_text())
    return jsonschema.Draft7Validator(schema)


def test_committed_asyncapi_is_current() -> None:
    assert generate.ASYNCAPI.read_text() == generate.render_asyncapi(), \
        "schemas/asyncapi.json is stale: run `make schemas` and commit it"


def test_asyncapi_is_valid_against_the_official_schema(document: dict[str, Any],
                                                       official: jsonschema.Draft7Validator) -> None:
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in official.iter_errors(document)]
    assert errors == []
    # the validator bites: a binding that breaks the Kafka binding schema, an unknown action
    broken = copy.deepcopy(document)
    broken["channels"]["documents"]["bindings"]["kafka"]["partitions"] = 0
    broken["operations"]["chunker-receives-documents"]["action"] = "consume"
    assert len(list(official.iter_errors(broken))) == 2


def _spec_of(event_type: str) -> TopicSpec:
    """The first topic (in registry order) that carries `event_type`."""
    return next(s for s in PIPELINE.topics() if event_type in s.event_types())


def test_every_topic_is_a_channel_and_every_event_type_a_message(document: dict[str, Any]) -> None:
    channels = {c["address"].removeprefix("{prefix}"): c for c in document["channels"].values()}
    assert set(channels) == {s.name for s in PIPELINE.topics()}
    for spec in PIPELINE.topics():
        channel = channels[spec.name]
        kafka = channel["bindings"]["kafka"]
        # a deployment setting unless the registry fixes the number (dead-letter topics)
        assert kafka.get("partitions") == spec.partitions
        assert ("RAGBUS_KAFKA_PARTITIONS" in channel["description"]) == (spec.partitions is None)
        assert kafka["topicConfiguration"]["cleanup.policy"] == ["delete"]
        assert kafka["topicConfiguration"]["retention.ms"] == int(spec.config["retention.ms"])
        messages = {document["components"]["messages"][ref["$ref"].rsplit("/", 1)[-1]]["name"]
                    for ref in channel["messages"].values()}
        assert messages == (set(spec.event_types()) or {"dead-letter"}), spec.name


def test_messages_describe_their_key_and_headers(document: dict[str, Any]) -> None:
    messages = document["components"]["messages"]
    for name, text, payload in EXAMPLES["document.arrived"]:
        assert payload["type"] == "document.arrived", (name, text)
    doc = messages["DocumentArrived"]
    assert "tenant/document_id" in doc["bindings"]["kafka"]["key"]["description"]
    assert messages["QueryRequested"]["correlationId"]["location"] == "$message.payload#/query_id"
    example = EXAMPLES["answer.generated"][0][2]
    from schemas.events import AnswerGenerated
    written = {name for name, _ in headers_for(AnswerGenerated.model_validate(example))}
    assert written == set(messages["AnswerGenerated"]["headers"]["properties"])


def test_dead_letter_headers_are_the_ones_ragbus_writes(document: dict[str, Any]) -> None:
    record = SourceRecord("ragbus.documents.v1", 2, 1041, b"k", b"{}", [("traceparent", b"x")])
    written = dead_letter("ragbus.", 2 * 1024 * 1024, CHUNKER, record, PoisonMessageError("why"))
    names = {k for k, _ in written.headers if k.startswith(DLQ_PREFIX)}
    documented = document["components"]["messages"]["DeadLetter"]["headers"]
    assert names == set(documented["required"])
    assert names | {DLQ_PREFIX + "truncated"} <= set(documented["properties"])
    assert ("traceparent", b"x") in written.headers  # the original headers are kept, as documented
    assert {f"dlq-{s}" for s in PIPELINE.names()} <= set(document["channels"])


def _payload_validator(document: dict[str, Any], model: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator({"$ref": f"#/components/schemas/{model}", "components": document["components"]})


def test_every_example_is_an_event_ragbus_reads(document: dict[str, Any]) -> None:
    checked = 0
    for message in document["components"]["messages"].values():
        for example in message.get("examples", []):
            if message["name"] == "dead-letter":
                continue
            model = message["payload"]["$ref"].rsplit("/", 1)[-1]
            errors = [e.message for e in _payload_validator(document, model).iter_errors(example["payload"])]
            assert errors == [], (message["name"], example["name"])
            event = decode(_spec_of(message["name"]), json.dumps(example["payload"]).encode())
            assert event.type == message["name"]
            checked += 1
    assert checked == sum(len(v) for v in EXAMPLES.values())
    # and the schema bites: a wrong example is caught
    bad = dict(EXAMPLES["document.arrived"][0][2], tenant="Not A Tenant")
    assert list(_payload_validator(document, "DocumentArrived").iter_errors(bad))


def test_json_schemas_declare_their_dialect_and_id() -> None:
    for path in sorted(generate.OUT.glob("*.json")):
        if path.name == "topics.json":
            continue
        schema = json.loads(path.read_text())
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema", path.name
        assert schema["$id"] == f"urn:ragbus:schema:v1:{path.stem}", path.name
        jsonschema.Draft202012Validator.check_schema(schema)


def test_json_schema_and_reader_agree_on_the_examples() -> None:
    for event_type, examples in EXAMPLES.items():
        spec = _spec_of(event_type)
        model = next(m for m in spec.models() if m.model_fields["type"].default == event_type)
        schema = json.loads((generate.OUT / f"{model.__name__}.json").read_text())
        for _, _, payload in examples:
            jsonschema.Draft202012Validator(schema).validate(payload)
            decode(spec, json.dumps(payload).encode())


def test_the_spec_path_is_what_the_makefile_installs() -> None:
    assert make_variable("SPECS") == str(SPECS.relative_to(ROOT))
