"""Weaviate start-up behaviour, against the in-process double: readiness, version, schema checks."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import weaviate
from weaviate.classes.config import Configure, DataType, Property
from weaviate.exceptions import WeaviateBaseError

from infra.settings import WeaviateSettings
from infra.stores.weaviate import WeaviateVectorIndex, connect
from kernel.errors import ConfigurationError, RetryableError
from kernel.ports import ChunkRecord, SearchRequest
from schemas.events import chunk_uuid
from tests.weaviate_double import WeaviateDouble


@pytest.fixture
def double() -> object:
    with WeaviateDouble() as w:
        yield w


def settings(w: WeaviateDouble) -> WeaviateSettings:
    return WeaviateSettings(url=w.url, grpc_port=w.grpc_port, timeout_s=5)


def test_unreachable_weaviate_is_a_clear_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="cannot reach Weaviate at http://127.0.0.1:9"):
        connect(WeaviateSettings(url="http://127.0.0.1:9", grpc_port=10, timeout_s=2))


def test_too_old_weaviate_is_refused(double: WeaviateDouble) -> None:
    double.store.version = "1.24.0"
    with pytest.raises(ConfigurationError, match="1.24"):
        connect(settings(double))


def test_collection_is_created_with_multi_tenancy_and_a_named_vector(double: WeaviateDouble) -> None:
    WeaviateVectorIndex(connect(settings(double)), "Chunks", 4)
    schema = double.store.schemas["Chunks"]
    assert schema["multiTenancyConfig"]["enabled"] and schema["multiTenancyConfig"]["autoTenantCreation"]
    assert list(schema["vectorConfig"]) == ["chunk"]
    tokenization = {p["name"]: p.get("tokenization") for p in schema["properties"]}
    assert tokenization["text"] == "word" and tokenization["document_id"] == "field"


def test_missing_properties_are_added_never_altered(double: WeaviateDouble) -> None:
    client = connect(settings(double))
    client.collections.create("Chunks", properties=[Property(name="text", data_type=DataType.TEXT)],
                              vector_config=[Configure.Vectors.self_provided(name="chunk")],
                              multi_tenancy_config=Configure.multi_tenancy(enabled=True, auto_tenant_creation=True))
    WeaviateVectorIndex(client, "Chunks", 4)
    names = {p["name"] for p in double.store.schemas["Chunks"]["properties"]}
    assert {"text", "document_id", "version", "meta"} <= names


@pytest.mark.parametrize("create", [
    {"properties": [Property(name="version", data_type=DataType.TEXT)],
     "vector_config": [Configure.Vectors.self_provided(name="chunk")],
     "multi_tenancy_config": Configure.multi_tenancy(enabled=True)},
    {"properties": [], "vector_config": [Configure.Vectors.self_provided(name="chunk")]},
])
def test_an_incompatible_collection_is_reported(double: WeaviateDouble, create: dict[str, object]) -> None:
    client: weaviate.WeaviateClient = connect(settings(double))
    client.collections.create("Chunks", **create)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="incompatible"):
        WeaviateVectorIndex(client, "Chunks", 4)


@pytest.mark.parametrize(("code", "expected"), [
    (grpc.StatusCode.UNAVAILABLE, RetryableError), (grpc.StatusCode.DEADLINE_EXCEEDED, RetryableError),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, RetryableError), (grpc.StatusCode.PERMISSION_DENIED, ConfigurationError),
    (grpc.StatusCode.UNAUTHENTICATED, ConfigurationError), (grpc.StatusCode.INVALID_ARGUMENT, WeaviateBaseError),
    (grpc.StatusCode.UNKNOWN, WeaviateBaseError),
], ids=lambda v: getattr(v, "name", getattr(v, "__name__", str(v))))
def test_failures_are_classified_by_grpc_status_not_message(double: WeaviateDouble, code: grpc.StatusCode,
                                                           expected: type[Exception]) -> None:
    index = WeaviateVectorIndex(connect(settings(double)), "Chunks", 4)
    chunk = ChunkRecord(chunk_uuid("t", "d", 1, 0), "t", "d", 1, 0, "text", np.ones(4, dtype=np.float32) / 2)
    assert index.upsert([chunk]) == []
    double.store.fail_with = code
    calls = [lambda: index.delete_versions("t", "d", below=5)]
    if code is not grpc.StatusCode.UNAVAILABLE:  # the client itself retries UNAVAILABLE searches and batches
        calls += [lambda: index.upsert([chunk]),  # with backoff for about a minute before it raises
                  lambda: index.search("t", SearchRequest(text="text", vector=chunk.vector, candidates=10))]
    for call in calls:
        with pytest.raises(expected) as raised:
            call()
        if expected is WeaviateBaseError:  # permanent: surfaces as itself, never as a kernel error
            assert not isinstance(raised.value, RetryableError | ConfigurationError)


def test_each_generation_is_a_collection_named_as_weaviate_names_it(double: WeaviateDouble) -> None:
    """g1 is the configured collection itself (the one of every deployment from before generations); g2 adds its
    suffix. Weaviate capitalises a class's first letter: the adapter creates, queries and drops that name."""
    client = connect(settings(double))
    chunk = ChunkRecord(chunk_uuid("t", "d", 1, 0), "t", "d", 1, 0, "text", np.ones(4, dtype=np.float32) / 2)
    g1 = WeaviateVectorIndex(client, "chunks", 4, generation="g1")
    g2 = WeaviateVectorIndex(client, "chunks", 4, generation="g2")
    assert (g1.name, g2.name) == ("Chunks", "Chunks_g2") and set(double.store.schemas) == {"Chunks", "Chunks_g2"}
    assert g2.upsert([chunk]) == [] and set(double.store.data["Chunks_g2"]) == {"t"} and not double.store.data["Chunks"]
    assert g2.count("t") == 1 and g1.count("t") == 0
    g2.drop()
    assert set(double.store.schemas) == {"Chunks"}
    assert WeaviateVectorIndex(client, "chunks", 4, generation="g2").count() == 0


def test_a_generation_of_another_model_is_refused_with_the_way_forward(double: WeaviateDouble) -> None:
    client = connect(settings(double))
    WeaviateVectorIndex(client, "Chunks", 4, "model-a", generation="g2")
    with pytest.raises(ConfigurationError, match=r"collection Chunks_g2 \(generation g2\) holds vectors of the "
                                                 r"embedding model 'model-a'.*'model-b'.*ragbus reindex start --model"):
        WeaviateVectorIndex(client, "Chunks", 4, "model-b", generation="g2")
