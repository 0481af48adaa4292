"""Weaviate start-up behaviour, against the in-process double: readiness, version, schema checks."""

from __future__ import annotations

import pytest
import weaviate
from weaviate.classes.config import Configure, DataType, Property

from infra.settings import WeaviateSettings
from infra.stores.weaviate import WeaviateVectorIndex, connect
from kernel.errors import ConfigurationError
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
