"""A stage worker with injected handler exceptions, for `bench/chaos.py --faults`:

    python bench/faults.py STAGE [STAGE ...]      (what `ragbus worker STAGE ...` runs, plus faults)

The faults are keyed on document ids and question texts, so every redelivery meets the same fault:

- `fault-chunker-*` documents: the chunker raises an exception of an unexpected type, every time;
- `fault-indexer-*` documents: the indexer raises an exception of an unexpected type for any batch
  holding one, every time (the runner runs the batch's events one by one to find it);
- `flaky-*` documents: the embedder's batch call raises once per process for a batch holding one of
  them, and succeeds when the runner retries the event alone (a transient bug);
- questions containing `fault-answerer`: the answerer raises, every time.

Expected outcome: the `fault-*` events end in their stage's dead-letter topic and nothing else of
theirs is indexed; everything else, `flaky-*` included, is processed exactly as without faults.
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from consumers import answerer, indexer
from ragbus import cli
from streams import chunker
from streams import embedder as embedding

#: Exception types no stage expects (none of them is a PoisonMessageError or a RetryableError).
UNEXPECTED: tuple[type[BaseException], ...] = (KeyError, RecursionError, ZeroDivisionError, AttributeError,
                                               UnicodeError, MemoryError, AssertionError, TypeError)


def unexpected(key: str) -> BaseException:
    kind = UNEXPECTED[zlib.crc32(key.encode()) % len(UNEXPECTED)]
    return kind(f"injected fault for {key}")


def install() -> None:
    chunk_event, embed_events, index, answer = (chunker.chunk_event, embedding.embed_events, indexer.Indexer.handle,
                                                answerer.Answerer.answer)
    seen: set[str] = set()

    def faulty_chunk_event(event: Any, *args: Any) -> Any:
        if event.document_id.startswith("fault-chunker"):
            raise unexpected(event.document_id)
        return chunk_event(event, *args)

    def faulty_embed_events(events: Any, *args: Any) -> Any:
        flaky = {f"{e.document_id}@{getattr(e, 'part', 0)}" for e in events if e.document_id.startswith("flaky-")}
        if flaky - seen:
            seen.update(flaky)
            raise unexpected(sorted(flaky)[0])
        return embed_events(events, *args)

    def faulty_index(self: Any, events: Any) -> Any:
        for event in events:
            if event.document_id.startswith("fault-indexer"):
                raise unexpected(event.document_id)
        return index(self, events)

    def faulty_answer(self: Any, query: Any) -> Any:
        if "fault-answerer" in query.text:
            raise unexpected(query.query_id)
        return answer(self, query)

    chunker.chunk_event = faulty_chunk_event
    embedding.embed_events = faulty_embed_events
    indexer.Indexer.handle = faulty_index  # type: ignore[method-assign]
    answerer.Answerer.answer = faulty_answer  # type: ignore[method-assign]


if __name__ == "__main__":
    install()
    sys.argv = ["ragbus", "worker", *sys.argv[1:]]
    cli.main()
