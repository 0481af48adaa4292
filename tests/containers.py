"""Real Kafka (KRaft), MongoDB and Weaviate through testcontainers, for the integration tier.

Every fixture skips with the reason when no Docker engine answers (`docker.from_env().ping()`; the
docker client alone is not enough), so the default run needs no Docker.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

WEAVIATE_IMAGE = "semitechnologies/weaviate:1.32.4"
KAFKA_IMAGE = "confluentinc/cp-kafka:7.7.1"
MONGO_IMAGE = "mongo:7.0"


def docker_or_skip() -> None:
    try:
        import docker

        client = docker.from_env()
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        pytest.skip(f"no Docker engine answers ({type(exc).__name__}); the integration tier needs one")


@pytest.fixture(scope="session")
def weaviate_container() -> Iterator[tuple[str, int]]:
    docker_or_skip()
    from testcontainers.community.weaviate import WeaviateContainer

    with WeaviateContainer(WEAVIATE_IMAGE) as w:
        yield f"http://{w.get_container_host_ip()}:{w.get_http_port()}", int(w.get_grpc_port())


@pytest.fixture(scope="session")
def mongodb_uri() -> Iterator[str]:
    docker_or_skip()
    from testcontainers.community.mongodb import MongoDbContainer

    with MongoDbContainer(MONGO_IMAGE) as m:
        yield m.get_connection_url()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    docker_or_skip()
    from testcontainers.community.kafka import KafkaContainer

    with KafkaContainer(KAFKA_IMAGE).with_kraft() as k:
        yield k.get_bootstrap_server()
