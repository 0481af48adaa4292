"""What `ragbus status` reports, read from the stores themselves, the dead-letter topics, and the consumer
groups' committed offsets on Kafka (true for every process of the cluster, wherever it runs)."""

from __future__ import annotations

from typing import Any

from engine.broker import lost
from engine.clients import check_reachable
from engine.groups import group_lags
from engine.tail import Tail
from infra.models.embedder import embedding_dim
from infra.ops.health_file import read_health
from infra.settings import Settings
from kernel.errors import ConfigurationError
from schemas.stages import PIPELINE

from . import wiring


def dead_letter_counts(settings: Settings) -> dict[str, int]:
    counts = {}
    for stage in PIPELINE:
        n = 0
        with Tail(settings, stage.dead_letters, from_start=True) as tail:
            while True:
                batch = tail.poll_raw(0.3)
                if not batch:
                    break
                n += batch
        counts[stage.name] = n
    return counts


def collect_status(settings: Settings, tenant: str | None = None) -> dict[str, Any]:
    from kernel.generations import serving

    from .reindex import report as generations

    store = wiring.build_store(settings)
    rows = generations(store, settings)
    now = serving(store.generations())  # the chunk counts are the serving generation's
    index = wiring.build_index(wiring.for_generation(settings, now.build), embedding_dim(now.build.model), now.name,
                               now.build)
    report: dict[str, Any] = {
        "documents": store.status_counts(tenant),
        "chunks": {"document_store": store.count_chunks(tenant, now.name), "vector_index": index.count(tenant)},
        "generations": rows,
        "stages": read_health(settings.health_dir()),
        "broker_lost": lost(settings.broker_file()) if not settings.kafka.bootstrap_servers else None,
    }
    if report["broker_lost"]:
        report["dead_letters"] = report["groups"] = "unknown (the local broker is gone)"
        return report
    try:
        check_reachable(settings, timeout_s=3)
        report["dead_letters"] = dead_letter_counts(settings)
        report["groups"] = [g.as_dict() for g in group_lags(settings)]
    except ConfigurationError as exc:
        report["dead_letters"] = report["groups"] = f"unknown ({exc})"
    return report
