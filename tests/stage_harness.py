"""A faust stage with scripted faults, run as its own process by the runtime tests:

    python -m tests.stage_harness

documents.v1 -> status.v1: one `received` status per document event, handled in batches of 8 (the
whole batch in one call, as the embedder does). RAGBUS_TEST_FAULT picks the fault:

- `unexpected`: the batch handler raises RecursionError when the batch holds a document whose id starts
  with "explode" (a type no runner expects);
- `slow`: each batch takes 0.25 s per event, so a stop request lands in the middle of one;
- `runner-bug`: the runner itself breaks on the batch holding a document whose id starts with "bug"
  (simulates a bug outside the stage, where nothing can be isolated);
- `broken-release`: every event raises RuntimeError until the file named by RAGBUS_TEST_FIXED exists.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine import faust_runner
from engine.delivery import BatchPolicy
from infra.ops import logs
from infra.ops.health import Health, StallPolicy
from infra.ops.health_file import report
from infra.ops.metrics import Metrics
from infra.settings import Settings
from kernel.stage import Out, PerEvent, Stage
from schemas.events import DocumentStatus, Status
from schemas.stages import PIPELINE
from schemas.topics import TOPICS, document_key

FAULT = os.environ.get("RAGBUS_TEST_FAULT", "")


def handle(events: Sequence[Any]) -> list[PerEvent]:
    if FAULT == "slow":
        time.sleep(0.25 * len(events))
    if FAULT == "unexpected" and any(e.document_id.startswith("explode") for e in events):
        raise RecursionError("maximum recursion depth exceeded (scripted)")
    if FAULT == "broken-release" and not Path(os.environ["RAGBUS_TEST_FIXED"]).exists():
        raise RuntimeError("a bug in this release (scripted)")
    return [[Out(TOPICS.status, document_key(e.tenant, e.document_id), DocumentStatus(
        tenant=e.tenant, document_id=e.document_id, version=1, status=Status.RECEIVED, stage="harness"))]
        for e in events]


def main() -> None:
    settings = Settings()
    logs.configure(settings.log_level, settings.log_format)
    metrics = Metrics()
    stage = Stage(PIPELINE["chunker"], handle=handle, max_batch=8, window_s=0.05)
    if FAULT == "runner-bug":
        real = BatchPolicy.process

        def broken(self: Any, records: list[Any], wait: Any) -> Any:
            if any((r.key or b"").split(b"/")[-1].startswith(b"bug") for r in records):
                raise RuntimeError("scripted bug in the runner")
            return real(self, records, wait)

        BatchPolicy.process = broken  # type: ignore[method-assign]
    health = Health(stage.name, metrics, settings.health_dir(), StallPolicy.of(settings))
    report([health])
    policy = BatchPolicy(settings, stage, metrics, health)
    faust_runner.run(faust_runner.build_app(settings, policy, metrics, health), settings)


if __name__ == "__main__":
    main()
