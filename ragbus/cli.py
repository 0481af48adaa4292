"""The `ragbus` command line. Errors a user can fix are one line on stderr and a non-zero exit."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from infra.ops import logs
from infra.settings import Settings
from kernel.errors import RagbusError
from schemas.stages import PIPELINE

if TYPE_CHECKING:  # imported where used: the CLI starts without loading the evaluation's modules
    from ragbus.evaluate import EvalSet

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="ragbus: event-driven RAG on Kafka.")
topics_app = typer.Typer(no_args_is_help=True, help="Provision Kafka topics.")
app.add_typer(topics_app, name="topics")
dlq_app = typer.Typer(no_args_is_help=True, help="Inspect and replay dead letters.")
app.add_typer(dlq_app, name="dlq")

embedder_app = typer.Typer(no_args_is_help=True, help="The embedding model.")
app.add_typer(embedder_app, name="embedder")
reindex_app = typer.Typer(no_args_is_help=True, help="Index generations: rebuild the index with another model or "
                                                     "chunking while the current one serves, then switch.")
app.add_typer(reindex_app, name="reindex")

DEMO_QUESTION = "How does ragbus make sure a redelivered event does not create duplicate chunks?"


def _settings(quiet: bool = True, traced: bool = False) -> Settings:
    """Settings for a command; `quiet=False` for long-running ones, whose client logs matter; `traced`
    for the commands that publish (their spans start the traces when OTLP export is configured)."""
    settings = Settings()
    logs.configure(settings.log_level, settings.log_format, quiet_clients=quiet)
    if traced:
        from infra.ops import tracing

        tracing.configure(settings, "ragbus-cli")
    return settings


@app.command()
def up() -> None:
    """Run everything on one machine in the foreground (local broker if no Kafka is configured)."""
    from .supervisor import Stack

    stack = Stack(_settings(quiet=False))
    try:
        stack.start()
        typer.echo(f"ragbus is up: Kafka at {stack.bootstrap}, data in {stack.child_settings().data_dir}. "
                   "Ctrl-C to stop.", err=True)
        stack.run_forever()
    finally:
        stack.stop()


@app.command()
def worker(stages: list[str] = typer.Argument(..., help=" | ".join(PIPELINE.names()))) -> None:
    """Run one stage (or several consumer stages) alone, e.g. to scale out on partitions."""
    from .worker import run_workers

    run_workers(_settings(quiet=False), stages)


@topics_app.command("create")
def topics_create() -> None:
    """Create every topic with its partitions and config (existing ones are checked, not altered).

    Partitions: RAGBUS_KAFKA_PARTITIONS (every pipeline topic), RAGBUS_KAFKA_TOPIC_PARTITIONS (per topic, JSON);
    replicas: RAGBUS_KAFKA_REPLICATION_FACTOR."""
    from engine.clients import check_reachable, ensure_topics, partitions, topic_name

    settings = _settings()
    check_reachable(settings)
    created = set(ensure_topics(settings))
    for spec in PIPELINE.topics():
        name = topic_name(settings, spec)
        state = "created" if name in created else "exists"
        typer.echo(f"{name:<40} {partitions(settings, spec):>4} partitions  {state}")
    typer.echo(f"created {len(created)} topics" + ("" if created else " (all existed with these partitions)"),
               err=True)


@embedder_app.command("export")
def embedder_export() -> None:
    """Export the ONNX model from the packaged weights into RAGBUS_EMBEDDER_ONNX_DIR (once; needs torch)."""
    from infra.models.onnx_embedder import ensure_exported

    settings = _settings()
    path = ensure_exported(settings.embedder, settings.onnx_dir())
    typer.echo(str(path))


@app.command()
def ingest(paths: list[Path] = typer.Argument(..., help="files, directories or .jsonl files"),
           tenant: str = typer.Option("default", help="tenant the documents belong to"),
           wait: bool = typer.Option(False, "--wait", help="return when every document is searchable"),
           idle_timeout: float = typer.Option(
               120.0, min=1, help="--wait gives up after this many seconds without any progress in the pipeline"),
           timeout: float = typer.Option(None, min=1, help="--wait gives up after this many seconds in all "
                                                           "(default: no limit while the pipeline progresses)"),
           id_prefix: str = typer.Option(None, "--id-prefix",
                                         help="put this in front of every id instead of the directory's name "
                                              "(verbatim: 'handbook/' gives handbook/intro.md)"),
           acl: list[str] = typer.Option(None, "--acl", help="a principal who may read these documents (repeat for "
                                                             "several: --acl group:eng --acl user:alice); without "
                                                             "it, a JSONL line's own `acl`, else readable by all")
           ) -> None:
    """Publish one document-arrived event per file (or per JSONL line).

    A file's id is its path from the directory you name, starting with that directory's name
    (`ragbus ingest docs` gives docs/intro.md from any working directory); a file named directly gets
    its file name. Ingest the same files the same way again to update them."""
    from rich.progress import Progress

    from engine.clients import EventProducer, check_reachable
    from engine.tail import Tail
    from schemas.topics import TOPICS

    from . import wiring
    from .client import documents_from, new_correlation, publish, wait_final

    settings = _settings(traced=True)
    correlation = new_correlation()
    events = list(documents_from(paths, settings, wiring.build_store(settings), tenant, correlation, id_prefix))
    if not events:
        raise RagbusError("no documents found in the given paths")
    if acl:
        events = [_with_acl(e, acl) for e in events]
    check_reachable(settings)
    with Tail(settings, TOPICS.status) as tail:
        publish(settings, EventProducer(settings), events)
        typer.echo(f"published {len(events)} documents (correlation id {correlation})", err=True)
        if not wait:
            return
        with Progress(transient=False) as progress:
            bar = progress.add_task("indexing", total=len(events))
            final = wait_final(tail, events, timeout, lambda _: progress.advance(bar), idle_timeout_s=idle_timeout)
    failed = [s for s in final.values() if s.status.value == "failed"]
    missing = [e.document_id for e in events if e.document_id not in final]
    for s in failed:
        typer.echo(f"failed: {s.document_id}: {s.error}", err=True)
    why = (f"no progress for {idle_timeout:.0f}s" if timeout is None
           else f"not finished within {timeout:.0f}s or no progress for {idle_timeout:.0f}s")
    for m in missing:
        typer.echo(f"unfinished ({why}): {m}", err=True)
    typer.echo(f"{len(final) - len(failed)} indexed, {len(failed)} failed, {len(missing)} unfinished", err=True)
    if failed or missing:
        raise typer.Exit(1)


@app.command()
def delete(document_ids: list[str] = typer.Argument(..., help="ids of the documents to delete"),
           tenant: str = typer.Option("default"),
           version: int = typer.Option(None, help="delete up to this version (default: now)"),
           force: bool = typer.Option(False, "--force", help="publish even for ids the document store does not "
                                                             "know (e.g. still being indexed)")) -> None:
    """Publish a document-deleted event per id: removes its chunks from every store."""
    from pydantic import ValidationError

    from engine.clients import EventProducer, check_reachable, topic_name
    from engine.serde import summarize
    from infra.ops import tracing
    from schemas.events import DocumentDeleted
    from schemas.topics import TOPICS, document_key

    from . import wiring
    from .client import check_known

    settings = _settings(traced=True)
    try:
        events = [DocumentDeleted(tenant=tenant, document_id=d, version=version) for d in document_ids]
    except ValidationError as exc:
        raise RagbusError(f"invalid delete: {summarize(exc, [DocumentDeleted])}") from exc
    if not force:
        events = check_known(wiring.build_store(settings), events)
        if not events:
            typer.echo("nothing to delete: already deleted", err=True)
            return
    check_reachable(settings)
    producer = EventProducer(settings)
    for ev in events:
        with tracing.publishing(topic_name(settings, TOPICS.documents), ev) as trace_headers:
            producer.send(TOPICS.documents, document_key(ev.tenant, ev.document_id), ev, trace_headers)
    producer.flush()
    typer.echo(f"published {len(events)} deletes", err=True)


@app.command()
def ask(question: str = typer.Argument(None, help="the question (or use --queries)"),
        tenant: str = typer.Option("default"),
        top_k: int = typer.Option(5, "--top-k", min=1, max=100),
        retrieve_only: bool = typer.Option(False, "--retrieve-only", help="ranked chunks, no generation"),
        as_json: bool = typer.Option(False, "--json", help="print the answer event as it travelled"),
        queries: Path = typer.Option(None, "--queries", help="JSONL with query_id (or id) and text: ask all, one "
                                                             "JSON line each; ids come back unchanged"),
        principal: list[str] = typer.Option(None, "--principal", help="who is asking (repeat for several: "
                                                                        "--principal user:alice --principal "
                                                                        "group:eng); without it, only documents "
                                                                        "without an ACL are searched"),
        conversation: str = typer.Option(None, "--conversation", help="the conversation the question continues "
                                                                       "(asked again with the same id, a follow-up "
                                                                       "is answered in its context)"),
        timeout: float = typer.Option(120.0, help="seconds to wait for the answers")) -> None:
    """Publish a query event and wait for its answer on the answers topic."""
    from pydantic import ValidationError

    from engine.clients import check_reachable
    from engine.serde import summarize
    from schemas.events import QueryRequested

    from .client import ask_many
    from .render import StreamView

    settings = _settings(traced=True)
    try:
        if queries is not None:
            batch = [_query(queries, n, row, tenant=tenant, top_k=top_k, retrieve_only=retrieve_only,
                            principals=principal or [], conversation_id=conversation)
                     for n, row in _read_jsonl(queries)]
        elif question:
            batch = [QueryRequested(tenant=tenant, text=question, top_k=top_k, retrieve_only=retrieve_only,
                                    stream=not as_json, principals=principal or [], conversation_id=conversation)]
        else:
            raise RagbusError("give a question, or --queries FILE.jsonl")
    except ValidationError as exc:
        raise RagbusError(f"invalid query: {summarize(exc, [QueryRequested])}") from exc
    check_reachable(settings)
    single = queries is None and not as_json
    view = StreamView() if single else None
    answers = ask_many(settings, batch, timeout, on_delta=view.delta if view is not None else None)
    missing = [q.query_id for q in batch if q.query_id not in answers]
    for q in batch:
        if q.query_id in answers:
            if view is not None:
                view.finish(answers[q.query_id])  # the final answer, exactly, whatever was streamed
            else:
                typer.echo(answers[q.query_id].model_dump_json())
        else:
            typer.echo(json.dumps({"query_id": q.query_id, "error": f"no answer within {timeout:.0f}s"}))
    if missing:
        typer.echo(f"{len(missing)} queries got no answer within {timeout:.0f}s: is `ragbus up` running?", err=True)
        raise typer.Exit(1)


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) per non-empty line of a --queries file; a query id must not repeat (it is the
    idempotency key: a repeated id would get the first one's answer)."""
    if not path.exists():
        raise RagbusError(f"{path}: no such file")
    rows = []
    seen: dict[str, int] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
                if not isinstance(row, dict) or not ({"query_id", "id"} & row.keys()) or "text" not in row:
                    raise ValueError("need an object with 'query_id' (or 'id') and 'text'")
            except ValueError as exc:
                raise RagbusError(f"{path}:{n}: {exc}") from exc
            key = str(row.get("query_id", row.get("id")))
            if key in seen:
                raise RagbusError(f"{path}:{n}: query id {key!r} repeats line {seen[key]}: give each query its own id")
            seen[key] = n
            rows.append((n, row))
    return rows


@app.command("eval")
def eval_(directories: list[Path] = typer.Argument(..., help="BEIR directories: corpus.jsonl, queries.jsonl, "
                                                           "qrels.tsv (several: one table)"),
          tenant: str = typer.Option(None, help="tenant to ingest into (default: a fresh one) or to score; with "
                                                "several sets a prefix: set N uses TENANT-N"),
          no_ingest: bool = typer.Option(False, "--no-ingest", help="score an existing tenant (needs --tenant)"),
          as_json: bool = typer.Option(False, "--json", help="print one JSON object per set, one per line"),
          baseline: Path = typer.Option(None, help="an earlier --json output: paired nDCG@10 differences to it"),
          top_k: int = typer.Option(100, "--top-k", help="chunks retrieved per query (recall@100 needs 100)"),
          concurrency: int = typer.Option(1, min=1, max=64, help="queries in flight (1: latency of one query)"),
          timeout: float = typer.Option(3600.0, help="seconds for ingestion, and again for the queries")) -> None:
    """Ingest BEIR sets into the running stack, ask every query through the bus, print retrieval metrics."""
    from pydantic import ValidationError

    from engine.clients import check_reachable
    from engine.serde import summarize
    from schemas.events import Envelope

    from . import evaluate

    settings = _settings()
    evaluate.check_top_k(top_k)
    if no_ingest and not tenant:
        raise RagbusError("--no-ingest scores an existing tenant: name it with --tenant")
    run = uuid.uuid4().hex[:8]
    tenants = [(tenant or f"eval-{run}") + (f"-{n}" if len(directories) > 1 else "")
               for n in range(1, len(directories) + 1)]
    try:
        for t in tenants:
            Envelope(tenant=t)  # a bad tenant name fails here, as one line, not after the ingestion
    except ValidationError as exc:
        raise RagbusError(f"invalid --tenant: {summarize(exc)}") from exc
    sets = [evaluate.load_set(d) for d in directories]  # every set is checked before anything is published
    baselines = evaluate.load_baseline(baseline) if baseline is not None else None
    check_reachable(settings)
    results, unanswered = [], 0
    for directory, eval_set, t in zip(directories, sets, tenants, strict=True):
        result, missed = _eval_one(settings, eval_set, t, ingest=not no_ingest, top_k=top_k,
                                   concurrency=concurrency, timeout=timeout, quiet=as_json)
        results.append(result)
        unanswered += missed
        if as_json:
            typer.echo(json.dumps(result))
        else:
            _print_eval(directory, result, baselines)
    if len(results) > 1 and not as_json:
        typer.echo("")
        for line in evaluate.table(results, baselines):
            typer.echo(line)
    if unanswered:
        typer.echo(f"{unanswered} queries got no answer within {timeout:.0f}s: is `ragbus up` running?", err=True)
        raise typer.Exit(1)


def _eval_one(settings: Settings, eval_set: EvalSet, tenant: str, *, ingest: bool, top_k: int, concurrency: int,
              timeout: float, quiet: bool) -> tuple[dict[str, Any], int]:
    """One set through the bus: ingested into `tenant` (unless it is already there), asked, scored."""
    import time

    from rich.console import Console
    from rich.progress import Progress

    from . import evaluate

    ingested, ingest_s = 0, 0.0
    with Progress(console=Console(stderr=True), transient=quiet) as progress:  # stdout keeps the result
        if ingest:
            events = evaluate.corpus_events(settings, eval_set, tenant, f"eval-{tenant}")
            bar = progress.add_task(f"indexing into tenant {tenant}", total=len(events))
            started = time.monotonic()
            problems = evaluate.ingest(settings, events, timeout, lambda: progress.advance(bar))
            ingest_s, ingested = time.monotonic() - started, len(events) - len(problems)
            if problems:
                for p in problems[:20]:
                    typer.echo(f"not indexed: {p}", err=True)
                raise RagbusError(f"{len(problems)} of {len(events)} documents were not indexed; "
                                  "see `ragbus status` and `ragbus dlq list`")
        to_ask = eval_set.to_ask()  # with a multi-turn set, the turns that give the judged ones their context
        bar = progress.add_task("asking", total=len(to_ask))
        asked = evaluate.ask_all(settings, tenant, to_ask, top_k=top_k, concurrency=concurrency,
                                 timeout_s=timeout, progress=lambda: progress.advance(bar),
                                 conversation_of=eval_set.conversation_of)
    result = evaluate.report(eval_set, asked, tenant=tenant, documents_ingested=ingested, ingest_s=ingest_s,
                             top_k=top_k)
    return result, len(asked.unanswered)


def _print_eval(directory: Path, result: dict[str, Any], baselines: dict[str, Any] | None) -> None:
    from . import evaluate

    lo, hi = result["ndcg@10_ci95"]
    ingested = result["documents_ingested"]
    typer.echo(f"{directory}: {result['queries']} queries, tenant {result['tenant']}"
               + (f", {ingested} documents ingested in {result['ingest_s']:.0f}s" if ingested else ""))
    typer.echo(f"nDCG@10 {result['ndcg@10']:.4f} (95% bootstrap interval {lo:.3f}-{hi:.3f})  "
               f"recall@10 {result['recall@10']:.4f}  recall@100 {result['recall@100']:.4f}  "
               f"MRR@10 {result['mrr@10']:.4f}")
    typer.echo(f"query latency p50 {result['latency_ms']['p50']} ms, p95 {result['latency_ms']['p95']} ms "
               f"(retrieval in the answerer p50 {result['retrieve_ms']['p50']} ms)")
    other = baselines.get(directory.name) if baselines is not None else None
    if baselines is not None:
        diff = evaluate.versus(result, other) if other is not None else None
        typer.echo(f"vs baseline: nDCG@10 {diff[0]:+.4f} (paired 95% interval {diff[1]:+.3f}..{diff[2]:+.3f})"
                   if diff else f"vs baseline: {directory.name} is not in it")


def _with_acl(event: Any, acl: list[str]) -> Any:
    """The document event with `--acl`'s principals (validated like any event's: one line names what to fix)."""
    from pydantic import ValidationError

    from engine.serde import summarize
    from schemas.events import DocumentArrived

    try:
        return DocumentArrived.model_validate(event.model_dump() | {"acl": acl})
    except ValidationError as exc:
        raise RagbusError(f"--acl: {summarize(exc, [DocumentArrived])}") from exc


def _query(path: Path, n: int, row: dict[str, Any], **options: Any) -> Any:
    """A QueryRequested from a --queries line; a mistake is reported with the file and line."""
    from pydantic import ValidationError

    from engine.serde import summarize
    from schemas.events import QueryRequested

    query_id = row.get("query_id", row.get("id"))
    try:
        return QueryRequested(query_id=query_id if isinstance(query_id, str) else json.dumps(query_id),
                              text=row["text"], **options)
    except ValidationError as exc:
        raise RagbusError(f"{path}:{n}: invalid query: {summarize(exc, [QueryRequested])}") from exc


@app.command()
def status(as_json: bool = typer.Option(False, "--json"),
           tenant: str = typer.Option(None, help="only this tenant")) -> None:
    """Documents by status, chunks per store, dead letters, consumer-group lag from Kafka, local stages."""
    from infra.ops.health import UNHEALTHY

    from .inspect import collect_status
    from .render import print_groups

    report = collect_status(_settings(), tenant)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    if report["broker_lost"]:
        typer.echo(f"broker: LOST: {report['broker_lost']}")
    docs = ", ".join(f"{k} {v}" for k, v in sorted(report["documents"].items())) or "none"
    typer.echo(f"documents: {docs}")
    typer.echo(f"chunks: document store {report['chunks']['document_store']}, "
               f"vector index {report['chunks']['vector_index']}")
    for g in report["generations"]:
        extra = (f": {g['done']} / {g['total']} documents, {g['rate_per_s']}/s, "
                 + ("caught up" if g["caught_up"] else f"ETA {g['eta_s']} s")) if g["state"] == "building" else ""
        typer.echo(f"generation {g['name']} {g['state']} (model {g['build']['model']}, chunk "
                   f"{g['build']['chunk_size']}/{g['build']['chunk_overlap']}){extra}")
    dl = report["dead_letters"]
    typer.echo("dead letters: " + (", ".join(f"{k} {v}" for k, v in dl.items()) if isinstance(dl, dict) else dl))
    print_groups(report["groups"])
    stages = report["stages"]
    if not stages:
        typer.echo("stages: none reporting on this machine")
    for st in stages:
        state = st["state"]
        reason = st.get("broken") or st.get("degraded")
        why = f" ({reason})" if reason else ""
        typer.echo(f"stage {st['stage']} (pid {st['pid']}): {state.upper() if state != 'ok' else state}{why}, "
                   f"lag {st['lag']}, processed {st['processed']}")
    if report["broker_lost"] or any(st["state"] in UNHEALTHY for st in stages):
        raise typer.Exit(3)


def _stages(stage: str | None) -> list[str]:
    if stage is None:
        return list(PIPELINE.names())
    try:
        return [PIPELINE[stage].name]
    except KeyError as exc:
        raise RagbusError(exc.args[0]) from None


@dlq_app.command("list")
def dlq_list(stage: str = typer.Option(None, help="only this stage's dead letters"),
             as_json: bool = typer.Option(False, "--json", help="a JSON array, one object per dead letter")) -> None:
    """Show dead letters: where each came from and why it could not be processed."""
    from engine.clients import check_reachable
    from engine.deadletters import list_dead_letters

    settings = _settings()
    check_reachable(settings)
    n = 0
    if as_json:  # one JSON array, `[]` when there are none
        typer.echo("[" + ",\n".join(dl.model_dump_json() for dl in list_dead_letters(settings, _stages(stage))) + "]")
        return
    for dl in list_dead_letters(settings, _stages(stage)):
        n += 1
        typer.echo(f"{dl.stage:<9} {logs.where(dl.topic, dl.partition, dl.offset)} {dl.error_type}: {dl.reason[:160]}")
    typer.echo(f"{n} dead letters", err=True)


@dlq_app.command("replay")
def dlq_replay(stage: str = typer.Option(..., help="whose dead letters to re-publish"),
               limit: int = typer.Option(None, min=1, help="at most this many")) -> None:
    """Re-publish a stage's dead letters to the topics they came from (after a fix). Each is replayed once."""
    from engine.clients import check_reachable
    from engine.deadletters import replay

    settings = _settings()
    check_reachable(settings)
    typer.echo(f"replayed {replay(settings, _stages(stage)[0], limit)} dead letters of {stage}", err=True)


@reindex_app.command("start")
def reindex_start(model: str = typer.Option(None, help="embedding model of the new generation (default: "
                                                       "RAGBUS_EMBEDDER_MODEL)"),
                  chunk_size: int = typer.Option(None, min=16, max=510, help="tokens per chunk (default: "
                                                                             "RAGBUS_CHUNK_SIZE_TOKENS)"),
                  chunk_overlap: int = typer.Option(None, min=0, max=256, help="default: RAGBUS_CHUNK_OVERLAP_TOKENS"),
                  query_prefix: str = typer.Option(None, help="default: RAGBUS_EMBEDDER_QUERY_PREFIX"),
                  passage_prefix: str = typer.Option(None, help="default: RAGBUS_EMBEDDER_PASSAGE_PREFIX"),
                  window: int = typer.Option(16, min=0, help="documents of the rebuild in flight at most, so new "
                                                             "documents never queue behind the whole rebuild (0: "
                                                             "publish all at once)")) -> None:
    """Record a new index generation and publish its rebuild from the documents ragbus holds, at most `--window`
    in flight (the command runs until the last is published; `ragbus reindex resume` continues after an
    interruption); the serving one keeps answering, and every new event reaches both."""
    import dataclasses

    from rich.progress import Progress

    from engine.clients import check_reachable

    from . import reindex, wiring

    settings = _settings(traced=True)
    configured = wiring.build_of(settings)
    build = dataclasses.replace(
        configured, model=configured.model if model is None else model,
        chunk_size=configured.chunk_size if chunk_size is None else chunk_size,
        chunk_overlap=configured.chunk_overlap if chunk_overlap is None else chunk_overlap,
        query_prefix=configured.query_prefix if query_prefix is None else query_prefix,
        passage_prefix=configured.passage_prefix if passage_prefix is None else passage_prefix)
    check_reachable(settings)
    store = wiring.build_store(settings)
    with Progress(transient=True) as progress:
        bar = progress.add_task("rebuilding", total=store.status_counts().get("indexed", 0))
        generation, done = reindex.start(settings, store, build, lambda n: progress.advance(bar, n), window)
    settings_text = ", ".join(f"{k}={v!r}" for k, v in generation.build.__dict__.items())
    typer.echo(f"{generation.name} is building ({settings_text}): {done.published} documents queued", err=True)
    _missing(done.missing)
    typer.echo("follow it with `ragbus reindex status --watch`, then `ragbus reindex switch`", err=True)


def _missing(missing: list[tuple[str, str]]) -> None:
    if missing:
        shown = ", ".join(f"{t}/{d}" for t, d in missing[:5]) + (" ..." if len(missing) > 5 else "")
        typer.echo(f"{len(missing)} indexed documents have no content kept in the document store (indexed before "
                   f"ragbus kept it): {shown}; publish them again and they reach every generation", err=True)


@reindex_app.command("resume")
def reindex_resume(window: int = typer.Option(16, min=0, help="documents in flight at most (0: all at once)")
                   ) -> None:
    """Re-publish what the building generation still lacks (after `reindex start` died half-way through
    publishing)."""
    from engine.clients import check_reachable

    from . import reindex, wiring

    settings = _settings(traced=True)
    check_reachable(settings)
    generation, done = reindex.resume(settings, wiring.build_store(settings), window=window)
    typer.echo(f"{generation.name}: {done.published} documents re-published", err=True)
    _missing(done.missing)


@reindex_app.command("status")
def reindex_status(as_json: bool = typer.Option(False, "--json"),
                   watch: bool = typer.Option(False, "--watch", help="a progress bar until the building generation "
                                                                     "has caught up")) -> None:
    """Every index generation: which serves, which builds (documents done of total, rate, ETA), which is old."""
    from . import reindex, wiring

    settings = _settings()
    store = wiring.build_store(settings)
    rows = reindex.report(store, settings)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        build = ", ".join(f"{k}={v!r}" for k, v in row["build"].items())
        line = f"{row['name']:<4} {row['state']:<9} {build}"
        if row["state"] == "building":
            eta = "caught up" if row["caught_up"] else (f"ETA {row['eta_s']} s" if row["eta_s"] is not None else
                                                        "ETA unknown")
            line += f"\n     {row['done']} / {row['total']} documents, {row['rate_per_s']}/s, {eta}"
        typer.echo(line)
    building = next((r for r in rows if r["state"] == "building"), None)
    if watch and building is not None:
        import time

        from rich.progress import Progress

        with Progress() as progress:
            bar = progress.add_task(f"{building['name']} catching up", total=building["total"],
                                    completed=building["done"])
            while True:
                p = store.progress(building["name"])
                progress.update(bar, total=p.total, completed=p.done)
                if p.caught_up:
                    break
                time.sleep(1.0)
        typer.echo(f"{building['name']} has caught up: `ragbus reindex switch` serves it", err=True)


@reindex_app.command("switch")
def reindex_switch() -> None:
    """Serve the building generation once it has caught up (refused before, saying how far it is); the serving
    one is kept, still current, as old."""
    from . import reindex, wiring

    settings = _settings()
    generation = reindex.switch(wiring.build_store(settings), settings)
    typer.echo(f"{generation.name} serves now (answerers switch within a second); the previous generation is kept "
               "current as old: `ragbus reindex rollback` goes back, `ragbus reindex drop-old` deletes it", err=True)


@reindex_app.command("rollback")
def reindex_rollback() -> None:
    """Serve the old generation again (the one serving now becomes old)."""
    from . import reindex, wiring

    settings = _settings()
    name = reindex.rollback(wiring.build_store(settings), settings)
    typer.echo(f"{name} serves again", err=True)


@reindex_app.command("drop-old")
def reindex_drop_old() -> None:
    """Delete the old generation's index (no rollback after this)."""
    from kernel.generations import State

    from . import reindex, wiring

    settings = _settings()
    generation = reindex.drop(wiring.build_store(settings), settings, State.OLD)
    typer.echo(f"{generation.name} dropped", err=True)


@reindex_app.command("cancel")
def reindex_cancel() -> None:
    """Abandon the building generation and delete its index."""
    from kernel.generations import State

    from . import reindex, wiring

    settings = _settings()
    generation = reindex.drop(wiring.build_store(settings), settings, State.BUILDING)
    typer.echo(f"{generation.name} cancelled and dropped", err=True)


@app.command()
def demo(question: str = typer.Option(DEMO_QUESTION, help="the question to ask"),
         timeout: float = typer.Option(600.0)) -> None:
    """Start the embedded stack, ingest ragbus's own docs, ask a question, print the cited answer, stop."""
    from .demo import run_demo

    raise typer.Exit(run_demo(_settings(), question, timeout))


def main() -> None:
    try:
        app()
    except RagbusError as exc:
        typer.echo(f"ragbus: error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # the client libraries' errors (e.g. KafkaException) as one line, not a traceback
        if type(exc).__module__.split(".")[0] in {"confluent_kafka", "cimpl"}:
            typer.echo(f"ragbus: Kafka error: {exc}", err=True)
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
