"""The AsyncAPI 3.0 document of ragbus, built from the same models and topic registry as the JSON Schemas.

One channel per topic (its address carries the deployment's topic prefix as a parameter), one message per event
type with its key, headers and examples, Kafka bindings with partitions and topic configuration, and one operation
per stage and topic it reads or writes, as the stage registry declares them (schemas/stages.py). Dead-letter
channels describe their `ragbus-dlq-*` headers. `python -m schemas.generate` writes it to schemas/asyncapi.json;
tests/unit/test_contract.py validates it against the official AsyncAPI JSON Schema and fails when the committed
file is stale. No I/O in this module.
"""

from __future__ import annotations

import re
from dataclasses import fields
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from . import headers
from .events import SCHEMA_VERSION
from .examples import EXAMPLES
from .stages import PIPELINE
from .topics import TOPICS, Topics, TopicSpec

ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING = "0.5.0"
_REF = "#/components/schemas/{model}"

_DESCRIPTION = """\
ragbus is an event-driven RAG pipeline on Kafka. Upstream systems publish document events on
`documents.v1`; ragbus chunks, embeds and indexes them. Other systems publish questions on
`queries.v1`; ragbus answers on `answers.v1` (and streams `answer-deltas.v1`), with citations.

- **Values** are UTF-8 JSON objects, one event per message, at most 2 MiB. Every event carries the
  envelope `event_id`, `schema_version`, `occurred_at`, `correlation_id`, `tenant`, and a `type`.
  Readers ignore fields they do not know.
- **Keys** keep per-document order: document events are keyed `tenant/document_id`, queries and
  answers by `query_id`. ragbus re-keys a document event that arrives without that key (it reads
  tenant and id from the value) and counts it in `ragbus_events_rekeyed_total`.
- **Headers** (`content-type`, `ragbus-type`, `ragbus-schema-version`, `ragbus-correlation-id`) are
  written on every event ragbus publishes; on events you publish they are optional.
- **Topic names** start with the deployment's prefix (`RAGBUS_KAFKA_TOPIC_PREFIX`, default `ragbus.`).
- **Invalid events** are never dropped: they go, byte for byte, to the reading stage's dead-letter
  topic `dlq.<stage>.v1` with `ragbus-dlq-*` headers that name the field and what was expected.
- **Versions**: additive changes keep `schema_version`; a breaking change bumps it and ragbus keeps
  reading the old one (docs/schemas.md).

Guides: docs/publishing.md (documents: keys, versions, updates, deletes, tenants, large documents by
URL) and docs/subscribing.md (answers, deltas, deduplication, correlation).
"""

_INTERNAL = {"chunks", "embedded"}
_CORRELATION = {"query_id": "$message.payload#/query_id", "correlation_id": "$message.payload#/correlation_id"}


def _channel_id(attr: str) -> str:
    return attr.replace("_", "-")


def _message_id(model: type[BaseModel]) -> str:
    return model.__name__


def _doc(model: type[BaseModel]) -> tuple[str, str]:
    text = (model.__doc__ or "").strip()
    summary = text.split("\n\n")[0].replace("\n", " ")
    return summary, re.sub(r"(?<!\n)\n(?!\n)", " ", text)


def _kafka_config(spec: TopicSpec) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for key, value in spec.config.items():
        config[key] = value.split(",") if key == "cleanup.policy" else int(value)
    return config


def _event_headers(event_type: str) -> dict[str, Any]:
    props: dict[str, Any] = {
        name: {"type": "string", "description": text} for name, text in headers.EVENT_HEADERS.items()}
    props[headers.CONTENT_TYPE]["const"] = "application/json"
    props[headers.TYPE]["const"] = event_type
    props[headers.SCHEMA_VERSION]["const"] = str(SCHEMA_VERSION)
    return {"type": "object", "properties": props,
            "description": "Written by ragbus on every event it publishes; optional on events you publish."}


def _key_schema(spec: TopicSpec) -> dict[str, Any]:
    if spec.key == "tenant/document_id":
        return {"type": "string", "description": "`tenant/document_id` (UTF-8), e.g. `acme/handbook/onboarding.md`: "
                "all events of one document share a partition and stay in order.",
                "examples": ["acme/handbook/onboarding.md"]}
    if spec.key == "query_id":
        return {"type": "string", "description": "The query id (UTF-8): a query, its deltas and its answer share "
                "a partition.", "examples": ["support/ticket-881#1"]}
    return {"type": "string", "description": spec.key}


def _message(model: type[BaseModel], spec: TopicSpec) -> dict[str, Any]:
    event_type = str(model.model_fields["type"].default)
    summary, description = _doc(model)
    message: dict[str, Any] = {
        "name": event_type, "title": model.__name__, "summary": summary, "description": description,
        "contentType": "application/json", "headers": _event_headers(event_type),
        "payload": {"$ref": _REF.format(model=model.__name__)},
        "bindings": {"kafka": {"key": _key_schema(spec), "bindingVersion": KAFKA_BINDING}},
    }
    field = "query_id" if "query_id" in model.model_fields else "correlation_id"
    message["correlationId"] = {"location": _CORRELATION[field], "description": f"Correlate by `{field}`."}
    message["examples"] = [
        {"name": name, "summary": text, "payload": payload,
         "headers": {headers.CONTENT_TYPE: "application/json", headers.TYPE: event_type,
                     headers.SCHEMA_VERSION: str(SCHEMA_VERSION),
                     headers.CORRELATION_ID: str(payload.get("correlation_id", ""))}}
        for name, text, payload in EXAMPLES.get(event_type, [])]
    return message


def _dead_letter_message() -> dict[str, Any]:
    props = {headers.DLQ_PREFIX + name: {"type": "string", "description": text}
             for name, text in headers.DLQ_FIELDS.items()}
    props[headers.REPLAYED_FROM] = {"type": "string", "description": "Kept from the original record when it "
                                    "was itself a replay: the dead letter it was replayed from."}
    required = [headers.DLQ_PREFIX + n for n in headers.DLQ_FIELDS if n != "truncated"]
    return {
        "name": "dead-letter", "title": "DeadLetter",
        "summary": "A record a stage could not process: the original key and value, the reason in headers.",
        "description": "The value and key are the original record's bytes, untouched (the value may be any "
                       "bytes: it failed to decode, or its event failed), and the original headers are kept. "
                       "`ragbus dlq list` shows dead letters; `ragbus dlq replay --stage S` re-publishes them "
                       "to `ragbus-dlq-topic` after a fix.",
        "contentType": "application/octet-stream",
        "headers": {"type": "object", "required": required, "properties": props, "additionalProperties": True},
        "payload": {"description": "The original value's bytes (for a value over the topic's limit, its head; "
                                   "see ragbus-dlq-truncated)."},
        "bindings": {"kafka": {"key": {"type": "string", "description": "The original record's key, untouched."},
                               "bindingVersion": KAFKA_BINDING}},
        "examples": [{"name": "missing-type", "summary": "A document event without its type", "headers": {
            headers.dlq("stage"): "chunker", headers.dlq("topic"): "ragbus.documents.v1",
            headers.dlq("partition"): "2", headers.dlq("offset"): "1041",
            headers.dlq("error-type"): "PoisonMessageError",
            headers.dlq("reason"): "invalid documents.v1 event: missing field 'type': expected one of "
                                   "document.arrived, document.deleted",
            headers.dlq("occurred-at"): "2026-01-15T09:30:01.204113+00:00", headers.dlq("attempts"): "1"},
            "payload": {"tenant": "acme", "document_id": "handbook/onboarding.md", "text": "..."}}],
    }


def _topics() -> list[tuple[str, TopicSpec]]:
    """Every topic by its attribute in the registry: `Topics`' fields, then `dlq_<stage>` per declared stage."""
    named = [(f.name, getattr(TOPICS, f.name)) for f in fields(Topics)]
    return named + [(f"dlq_{stage.name}", stage.dead_letters) for stage in PIPELINE]


def _attr(spec: TopicSpec) -> str:
    return next(attr for attr, topic in _topics() if topic == spec)


def _channel(attr: str, spec: TopicSpec) -> dict[str, Any]:
    models = spec.models()
    messages = {(_message_id(m)): {"$ref": f"#/components/messages/{_message_id(m)}"} for m in models} if models \
        else {"DeadLetter": {"$ref": "#/components/messages/DeadLetter"}}
    note = " Internal: between ragbus's own stages; do not publish here." if attr in _INTERNAL else ""
    # Partitions of the pipeline's topics are a deployment setting, not part of the contract: the binding
    # states a number only where the registry fixes one (dead-letter topics).
    kafka: dict[str, Any] = {"topicConfiguration": _kafka_config(spec), "bindingVersion": KAFKA_BINDING}
    if spec.partitions is not None:
        kafka["partitions"] = spec.partitions
    else:
        note += " Partitions: the deployment's RAGBUS_KAFKA_PARTITIONS (default 4)."
    return {
        "address": "{prefix}" + spec.name, "title": spec.name,
        "description": f"{spec.description[:1].upper()}{spec.description[1:]}. Key: {spec.key}.{note}",
        "parameters": {"prefix": {"$ref": "#/components/parameters/prefix"}},
        "messages": messages,
        "bindings": {"kafka": kafka},
    }


def _operation(action: str, spec: TopicSpec, stage: str) -> dict[str, Any]:
    cid = _channel_id(_attr(spec))
    verb = "reads" if action == "receive" else "writes"
    messages = [_message_id(m) for m in spec.models()]
    return {
        "action": action, "channel": {"$ref": f"#/channels/{cid}"},
        "summary": f"The {stage} stage {verb} {spec.name}.",
        "messages": [{"$ref": f"#/channels/{cid}/messages/{m}"} for m in messages],
        "bindings": {"kafka": {"groupId": {"type": "string", "description": "The stage's consumer group: the "
                                           "topic prefix followed by the stage name.", "examples": [f"ragbus.{stage}"]},
                               "bindingVersion": KAFKA_BINDING}} if action == "receive" else {},
    }


def _operations() -> dict[str, Any]:
    """What each declared stage reads and writes: its receive, its sends topic by topic, its dead letters."""
    ops: dict[str, Any] = {}
    for stage in PIPELINE:
        ops[f"{stage.name}-receives-{_channel_id(_attr(stage.reads))}"] = _operation("receive", stage.reads, stage.name)
    for topic in TOPICS.events():
        for stage in PIPELINE.writers(topic):
            ops[f"{stage.name}-sends-{_channel_id(_attr(topic))}"] = _operation("send", topic, stage.name)
    for stage in PIPELINE:
        if stage.reply is not None:
            cid = _channel_id(_attr(stage.reply))
            ops[f"{stage.name}-receives-{_channel_id(_attr(stage.reads))}"]["reply"] = {
                "channel": {"$ref": f"#/channels/{cid}"},
                "messages": [{"$ref": f"#/channels/{cid}/messages/{_message_id(m)}"} for m in stage.reply.models()]}
    for stage in PIPELINE:
        ops[f"{stage.name}-sends-dlq-{stage.name}"] = {
            "action": "send", "channel": {"$ref": f"#/channels/dlq-{stage.name}"},
            "summary": f"The {stage.name} stage dead-letters what it cannot process.",
            "messages": [{"$ref": f"#/channels/dlq-{stage.name}/messages/DeadLetter"}]}
    for op in ops.values():
        if not op.get("bindings"):
            op.pop("bindings", None)
    return ops


def build() -> dict[str, Any]:
    """The AsyncAPI document as a JSON-ready dict (deterministic: same code, same document)."""
    models = []
    for _, spec in _topics():
        models += [m for m in spec.models() if m not in models]
    _, defs = models_json_schema([(m, "validation") for m in models], ref_template=_REF)
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "id": "urn:ragbus:api",
        "info": {"title": "ragbus", "version": str(SCHEMA_VERSION), "description": _DESCRIPTION,
                 "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"}},
        "defaultContentType": "application/json",
        "servers": {"kafka": {"host": "localhost:9092", "protocol": "kafka",
                              "description": "Your Kafka cluster (RAGBUS_KAFKA_BOOTSTRAP_SERVERS), or the local "
                                             "broker `ragbus up` starts when none is configured."}},
        "channels": {_channel_id(attr): _channel(attr, spec) for attr, spec in _topics()},
        "operations": _operations(),
        "components": {
            "schemas": defs["$defs"],
            "messages": {**{_message_id(m): _message(m, spec) for _, spec in _topics() for m in spec.models()},
                         "DeadLetter": _dead_letter_message()},
            "parameters": {"prefix": {"description": "The deployment's topic prefix (RAGBUS_KAFKA_TOPIC_PREFIX).",
                                      "default": "ragbus.", "examples": ["ragbus.", "staging.ragbus."]}},
        },
    }
