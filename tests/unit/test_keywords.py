"""The keyword analyser is called from the answerer's thread pool (query_alpha counts a query's terms): its
stems must not depend on what other threads are stemming at the same time."""

from __future__ import annotations

import threading

from retrieval.keywords import tokens


def test_threads_stemming_at_once_get_the_same_stems_as_one_thread() -> None:
    texts = [f"acme payroll calendar page {i}: queued exits, running generalizations" for i in range(200)]
    want = {t: tokens(t) for t in texts}
    wrong: list[str] = []

    def work() -> None:
        try:
            for _ in range(20):
                wrong.extend(t for t in texts if tokens(t) != want[t])
        except Exception as exc:  # a shared stemmer also fails outright: IndexError: string index out of range
            wrong.append(repr(exc))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
