"""`ragbus eval DIR`: retrieval quality and query latency of the running stack on a BEIR-layout set.

A multi-turn set gives its queries a `conversation_id` in queries.jsonl: each is asked in its conversation, in
file order, after the answer to the conversation's previous query (so a follow-up is rewritten and searched in
context); only queries with judgements are scored, and an unjudged turn is asked for the context it gives.

The documents of `DIR/corpus.jsonl` are ingested through the bus into a fresh tenant (or an existing one
with `--no-ingest`), every query of `DIR/queries.jsonl` is asked through the bus as a retrieve-only query,
and the ranked documents are scored against `DIR/qrels.tsv` (or `DIR/qrels/test.tsv`). So what it
measures is what a user of the stack gets: the answerer's own settings, index and model.

Query ids of any printable form (BEIR's `faq/general#3`) are mapped to internal ids for the bus and
given back unchanged. Latency is the round trip of each query (publish to answer received), asked
`concurrency` at a time (1 by default, so a query never waits behind another), next to the answerer's own
retrieval time from each answer's timings.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.clients import EventProducer
from engine.tail import Tail
from infra.settings import Settings
from kernel.errors import RagbusError
from retrieval.evaluation import Scores, bootstrap_interval, documents, paired_difference, score
from schemas.events import TOP_K_MAX, AnswerGenerated, DocumentArrived, QueryRequested
from schemas.topics import TOPICS

from . import wiring
from .client import InputError, publish, row_event, wait_final


@dataclass(frozen=True)
class EvalSet:
    corpus: Path
    #: The judged queries (what is scored), in file order.
    queries: list[tuple[str, str]]
    judgements: dict[str, dict[str, float]]
    #: Multi-turn sets: every query of a conversation (judged or not: an unjudged first turn is asked for the
    #: context it gives), in file order, and each one's conversation id. Empty for a set of single questions.
    turns: list[tuple[str, str]] = field(default_factory=list)
    conversation_of: dict[str, str] = field(default_factory=dict)

    def to_ask(self) -> list[tuple[str, str]]:
        """What is asked, in order: the judged queries, and the unjudged turns that give them their context."""
        if not self.conversation_of:
            return self.queries
        judged = {qid for qid, _ in self.queries}
        return [(qid, text) for qid, text in self.turns if qid in judged or qid in self.conversation_of]


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise InputError(f"{path}:{n}: not JSON ({exc})") from exc
                if not isinstance(row, dict) or "id" not in row or not isinstance(row.get("text"), str):
                    raise InputError(f"{path}:{n}: need an object with 'id' and a string 'text'")
                yield n, row


def load_set(directory: Path) -> EvalSet:
    """Read a BEIR-layout directory; every problem is one line that names the file and what to fix."""
    corpus, queries_file = directory / "corpus.jsonl", directory / "queries.jsonl"
    qrels = next((p for p in (directory / "qrels.tsv", directory / "qrels" / "test.tsv") if p.exists()), None)
    for needed in (corpus, queries_file):
        if not needed.exists():
            raise InputError(f"{needed}: no such file (a BEIR directory has corpus.jsonl, queries.jsonl, qrels.tsv)")
    if qrels is None:
        raise InputError(f"{directory}: no qrels.tsv (or qrels/test.tsv)")
    judgements: dict[str, dict[str, float]] = {}
    for n, line in enumerate(qrels.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split("\t")
        if not line.strip() or (n == 1 and parts[0] in ("query-id", "query_id", "qid")):
            continue
        if len(parts) < 3:
            raise InputError(f"{qrels}:{n}: need query-id<TAB>corpus-id<TAB>score")
        try:
            judgements.setdefault(parts[0], {})[parts[1]] = float(parts[2])
        except ValueError as exc:
            raise InputError(f"{qrels}:{n}: score {parts[2]!r} is not a number") from exc
    rows = [row for _, row in _rows(queries_file)]
    turns = [(str(row["id"]), row["text"]) for row in rows]
    conversation_of = {str(row["id"]): str(row["conversation_id"]) for row in rows if row.get("conversation_id")}
    queries = [(qid, text) for qid, text in turns if qid in judgements]
    if not queries:
        raise InputError(f"{queries_file}: no query has a judgement in {qrels}")
    return EvalSet(corpus, queries, judgements, turns, conversation_of)


def corpus_events(settings: Settings, eval_set: EvalSet, tenant: str, correlation: str) -> list[DocumentArrived]:
    """The corpus as `ragbus ingest` would publish it (a row's `content_type` and `metadata` included)."""
    store = wiring.build_store(settings)
    try:
        return [row_event(settings, store, row, tenant=tenant, correlation=correlation,
                          source=f"{eval_set.corpus.as_posix()}:{n}") for n, row in _rows(eval_set.corpus)]
    finally:
        store.close()


def ingest(settings: Settings, events: list[DocumentArrived], timeout_s: float,
           progress: Callable[[], None]) -> list[str]:
    """Publish the corpus and wait until every document is final; returns what failed or did not finish."""
    with Tail(settings, TOPICS.status) as tail:
        publish(settings, EventProducer(settings), events)
        final = wait_final(tail, events, timeout_s, lambda _: progress())
    problems = [f"{s.document_id}: {s.error}" for s in final.values() if s.status.value == "failed"]
    problems += [f"{e.document_id}: not indexed within {timeout_s:.0f}s" for e in events if e.document_id not in final]
    return problems


@dataclass
class Asked:
    rankings: dict[str, list[str]] = field(default_factory=dict)
    round_trip_ms: list[float] = field(default_factory=list)
    retrieve_ms: list[float] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)


def ask_all(settings: Settings, tenant: str, queries: list[tuple[str, str]], *, top_k: int, concurrency: int,
            timeout_s: float, progress: Callable[[], None], conversation_of: dict[str, str] | None = None) -> Asked:
    """Ask every query retrieve-only through the bus, at most `concurrency` in flight. A query of a conversation
    (`conversation_of`: query id -> conversation id) is asked in it, after the answer to the conversation's
    previous query, as an assistant asks a follow-up; the conversation ids are made unique to this run."""
    run = uuid.uuid4().hex[:10]
    internal = {f"eval-{run}-{i}": (qid, text) for i, (qid, text) in enumerate(queries)}
    conversation = {key: f"eval-{run}/{(conversation_of or {})[qid]}" for key, (qid, _) in internal.items()
                    if qid in (conversation_of or {})}
    pending = list(internal)
    in_flight: dict[str, float] = {}
    out = Asked()
    producer = EventProducer(settings)

    def ready(key: str) -> bool:  # nothing earlier of its conversation still waits for its answer
        c = conversation.get(key)
        return c is None or not any(conversation.get(k) == c for k in [*in_flight, *pending[:pending.index(key)]])

    with Tail(settings, TOPICS.answers) as answers:
        deadline = time.monotonic() + timeout_s
        while (pending or in_flight) and time.monotonic() < deadline:
            while len(in_flight) < concurrency and (key := next((k for k in pending if ready(k)), None)) is not None:
                pending.remove(key)
                producer.send(TOPICS.queries, conversation.get(key, key), QueryRequested(
                    tenant=tenant, query_id=key, text=internal[key][1], top_k=top_k, retrieve_only=True,
                    conversation_id=conversation.get(key),
                    deadline_ms=int(min(600.0, max(1.0, timeout_s)) * 1000)))
                producer.flush()
                in_flight[key] = time.perf_counter()
            for a in answers.poll(0.05):
                if isinstance(a, AnswerGenerated) and a.query_id in in_flight:
                    out.round_trip_ms.append((time.perf_counter() - in_flight.pop(a.query_id)) * 1000)
                    out.retrieve_ms.append(a.timings.retrieve_ms)
                    out.rankings[internal[a.query_id][0]] = documents([c.document_id for c in a.citations])
                    progress()
    out.unanswered = [internal[k][0] for k in [*in_flight, *pending]]
    return out


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))], 1)


def report(eval_set: EvalSet, asked: Asked, *, tenant: str, documents_ingested: int, ingest_s: float,
           top_k: int) -> dict[str, Any]:
    judged = {qid: eval_set.judgements[qid] for qid, _ in eval_set.queries}
    scores: Scores = score(asked.rankings, judged)
    metrics = scores.means()
    return {
        "set": str(eval_set.corpus.parent), "tenant": tenant, "queries": len(judged),
        "answered": len(judged.keys() & asked.rankings.keys()), "documents_ingested": documents_ingested,
        "ingest_s": round(ingest_s, 1),
        "top_k": top_k, **metrics, "ndcg@10_ci95": list(bootstrap_interval(scores.ndcg10)),
        "latency_ms": {"p50": percentile(asked.round_trip_ms, 50), "p95": percentile(asked.round_trip_ms, 95)},
        "retrieve_ms": {"p50": percentile(asked.retrieve_ms, 50), "p95": percentile(asked.retrieve_ms, 95)},
        "unanswered": asked.unanswered[:20],
        # per query, so a later run can be compared with this one on the same questions (--baseline)
        "ndcg@10_per_query": dict(zip(sorted(judged), scores.ndcg10, strict=True)),
    }


def load_baseline(path: Path) -> dict[str, dict[str, Any]]:
    """Results of an earlier `ragbus eval --json` (one JSON object per line), by set directory name."""
    try:
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise InputError(f"--baseline {path}: not the output of `ragbus eval --json` ({exc})") from exc
    out = {Path(r["set"]).name: r for r in lines if isinstance(r, dict) and "ndcg@10_per_query" in r}
    if not out:
        raise InputError(f"--baseline {path}: no set with per-query scores (made by `ragbus eval --json`)")
    return out


def versus(result: dict[str, Any], baseline: dict[str, Any]) -> tuple[float, float, float] | None:
    """This run's nDCG@10 minus the baseline's over the questions both scored, with its paired 95% interval."""
    mine, theirs = result["ndcg@10_per_query"], baseline["ndcg@10_per_query"]
    common = sorted(set(mine) & set(theirs))
    if not common:
        return None
    return paired_difference([theirs[q] for q in common], [mine[q] for q in common])


def table(results: list[dict[str, Any]], baselines: dict[str, dict[str, Any]] | None) -> list[str]:
    """One line per set: the figures `ragbus eval` prints for several sets at once."""
    lines = ["| set | queries | nDCG@10 (95% CI) | recall@10 | recall@100 | MRR@10 | round trip p50 / p95 ms "
             "| retrieve p50 ms |" + (" vs baseline (95% CI) |" if baselines is not None else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|" if baselines is not None else "")]
    for r in results:
        lo, hi = r["ndcg@10_ci95"]
        line = (f"| {Path(r['set']).name} | {r['queries']} | {r['ndcg@10']:.3f} ({lo:.3f}-{hi:.3f}) | "
                f"{r['recall@10']:.3f} | {r['recall@100']:.3f} | {r['mrr@10']:.3f} | {r['latency_ms']['p50']} / "
                f"{r['latency_ms']['p95']} | {r['retrieve_ms']['p50']} |")
        if baselines is not None:
            other = baselines.get(Path(r["set"]).name)
            diff = versus(r, other) if other is not None else None
            line += f" {diff[0]:+.3f} ({diff[1]:+.3f}, {diff[2]:+.3f}) |" if diff else " (not in the baseline) |"
        lines.append(line)
    return lines


def check_top_k(top_k: int) -> None:
    if not 1 <= top_k <= TOP_K_MAX:
        raise RagbusError(f"--top-k must be between 1 and {TOP_K_MAX}")
