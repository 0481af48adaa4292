"""A rebuild into a new index generation, measured from outside (CLI, topics), against a fresh ingest.

    python bench/reindex.py [--set ../shared/data/pydocs-faq-dev] [--docs 1000] [--chunk-size 128]
                            [--queries 60] [--probes 5] [--deletes 20] [--second-model] [--json]

`--docs N` uses every judged document of the set and the set's first others up to N (written to a temporary
BEIR directory; the set's queries all keep their answers), so a run fits a busy machine; 0: the whole corpus.

With `--second-model` the new generation also changes the embedding model: a second model built here from the
packaged all-MiniLM-L6-v2 by keeping its first 3 of 6 transformer layers (sentence-transformers, saved to a
directory; ragbus exports it to ONNX on first use), so the rebuild re-embeds everything with other vectors.

1. Stack A (`ragbus up`'s processes, local broker, fresh data directory, default settings): `ragbus eval SET`
   ingests the set's corpus and scores it: the serving generation g1.
2. Idle: `--queries` retrieve-only queries one at a time (round trip, and the answer's `retrieve_ms`), and
   `--probes` freshness probes (a short document with a unique token, queried until cited).
3. `ragbus reindex start --chunk-size N --window W` (in the background: it runs until the last document is
   published); `--deletes` documents deleted with `ragbus delete` once the generation is recorded. While the
   rebuild runs: the same queries and probes, again and again, until `ragbus reindex status --json` says caught
   up. Rebuild throughput = documents queued / seconds from `start` to caught up.
4. `ragbus reindex switch`; the audit (every indexed document at its current version in g2, its chunks cut at
   N; no chunk of a deleted one in g2); `ragbus eval SET --no-ingest` on g2.
5. Stack B, fresh, configured with chunk size N from the start: `ragbus eval SET` (a fresh ingest with the same
   settings) for its ingest throughput; the same documents deleted; `ragbus eval SET --no-ingest` for its
   quality, against the rebuild's (paired, per query).

Targets (issue 27): rebuild throughput >= 0.9x the fresh ingest's; quality equal within the paired noise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.freshness import idle_probes
from bench.latency import one_at_a_time, summary
from bench.report import emit, ragbus, run_facts
from chunking.splitter import Chunker
from infra.models.embedder import embedding_dim, load_tokenizer
from infra.ops import logs
from infra.settings import Settings
from ragbus import evaluate, wiring
from ragbus.client import QueryClient
from ragbus.supervisor import Stack
from schemas.events import chunk_uuid

DEFAULT_SET = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "pydocs-faq-dev"
TENANT = "bench"


def second_model(path: Path) -> Path:
    """all-MiniLM-L6-v2 cut to its first 3 transformer layers: another model of the same width (384), whose
    vectors differ from the packaged one's."""
    from sentence_transformers import SentenceTransformer

    from infra.models.embedder import model_dir

    model = SentenceTransformer(str(model_dir("all-MiniLM-L6-v2")), device="cpu")
    encoder = model[0].auto_model.encoder
    encoder.layer = encoder.layer[:3]
    model[0].auto_model.config.num_hidden_layers = 3
    model.save(str(path))
    return path


def subset(directory: Path, docs: int, into: Path) -> Path:
    """The set with its judged documents and its first other documents up to `docs` in all."""
    if docs <= 0:
        return directory
    judged = {line.split("\t")[1] for line in (directory / "qrels.tsv").read_text().splitlines()[1:] if line}
    rows = [json.loads(line) for line in (directory / "corpus.jsonl").read_text().splitlines() if line]
    kept = [r for r in rows if r["id"] in judged]
    kept += [r for r in rows if r["id"] not in judged][:max(0, docs - len(kept))]
    into.mkdir(parents=True)
    (into / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    for name in ("queries.jsonl", "qrels.tsv"):
        (into / name).write_text((directory / name).read_text())
    return into


def evaluate_set(settings: Settings, directory: Path, ingest: bool) -> dict[str, Any]:
    args = ["eval", str(directory), "--tenant", TENANT, "--json"] + ([] if ingest else ["--no-ingest"])
    result: dict[str, Any] = json.loads(ragbus(settings, *args).stdout.strip().splitlines()[-1])
    return result


def questions(directory: Path) -> list[str]:
    return [json.loads(line)["text"] for line in (directory / "queries.jsonl").read_text().splitlines() if line]


def generation(settings: Settings, name: str) -> dict[str, Any]:
    rows = json.loads(ragbus(settings, "reindex", "status", "--json").stdout)
    return next(r for r in rows if r["name"] == name)


def phase(settings: Settings, texts: list[str], queries: int, probes: int) -> dict[str, Any]:
    """Queries one at a time, then freshness probes (each a short document published and queried until cited)."""
    with QueryClient(settings) as client:
        rtt, retrieve, _ = one_at_a_time(client, texts, queries)
    fresh = idle_probes(settings, probes)
    return {"round_trip_ms": summary(rtt), "retrieve_ms": summary(retrieve),
            "publish_to_searchable_s": fresh["publish_to_searchable_s"], "probes_found": fresh["found"]}


def audit(settings: Settings, chunk_size: int, deleted: list[str]) -> list[str]:
    """g2 serving with its build; every indexed document's current version there with exactly its chunks cut at
    the new size (recomputed here from the kept content); nothing of a deleted document."""
    from schemas.events import ContentRef, ContentType

    store = wiring.build_store(settings)
    g2 = next(g for g in store.generations() if g.name == "g2")
    problems = [] if g2.state.value == "serving" else [f"g2 is {g2.state.value}, not serving"]
    if g2.build.chunk_size != chunk_size:
        problems.append(f"g2 records chunk size {g2.build.chunk_size}")
    chunker = Chunker(load_tokenizer(g2.build.model), g2.build.chunk_size, g2.build.chunk_overlap)
    index = wiring.build_index(wiring.for_generation(settings, g2.build), embedding_dim(g2.build.model), "g2",
                               g2.build)
    checked = 0
    for doc in wiring.build_store(settings).list_documents(TENANT, 1_000_000):
        in_index = {c for c, v in index.chunk_versions(TENANT, doc.document_id)}
        if doc.document_id in deleted or doc.status.value == "deleted":
            if in_index:
                problems.append(f"{doc.document_id}: deleted, {len(in_index)} entries in g2")
            continue
        content = store.get_content(ContentRef(sha256=doc.content_hash, size=0)).decode()
        want = {chunk_uuid(TENANT, doc.document_id, doc.version, c.index, "g2")
                for c in chunker.chunk(ContentType(doc.content_type), content)}
        if in_index != want:
            problems.append(f"{doc.document_id}: g2 holds {len(in_index)} chunks, expected the {len(want)} of "
                            f"v{doc.version}")
        checked += 1
    if checked == 0:
        problems.append("no document audited")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", type=Path, default=DEFAULT_SET)
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--chunk-size", type=int, default=128)
    ap.add_argument("--queries", type=int, default=60)
    ap.add_argument("--probes", type=int, default=5)
    ap.add_argument("--deletes", type=int, default=20)
    ap.add_argument("--window", type=int, default=16, help="`ragbus reindex start --window`")
    ap.add_argument("--quiet-rebuild", action="store_true",
                    help="no queries or probes during the rebuild (its throughput alone, like the fresh ingest's)")
    ap.add_argument("--second-model", action="store_true", help="the new generation also changes the model")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    texts = questions(args.set)
    result: dict[str, Any] = {"set": args.set.name, "chunk_size": args.chunk_size, **run_facts()}
    os.environ.pop("RAGBUS_KAFKA_BOOTSTRAP_SERVERS", None)
    os.environ.setdefault("RAGBUS_LOG_LEVEL", "WARNING")
    with tempfile.TemporaryDirectory(prefix="ragbus-reindex-") as tmp:
        args.set = subset(args.set, args.docs, Path(tmp) / "set")
        result["documents_in_set"] = sum(1 for _ in (args.set / "corpus.jsonl").open())
        model = str(second_model(Path(tmp) / "minilm-l3")) if args.second_model else None
        result["model"] = "all-MiniLM-L6-v2 cut to 3 layers" if model else "unchanged"
        os.environ["RAGBUS_DATA_DIR"] = str(Path(tmp) / "a")
        settings = Settings()
        logs.configure(settings.log_level, settings.log_format, quiet_clients=True)
        with Stack(settings) as stack:
            child = stack.child_settings()
            g1 = evaluate_set(child, args.set, ingest=True)
            result["g1"] = {k: g1[k] for k in ("documents_ingested", "ingest_s", "ndcg@10", "recall@10")}
            result["idle"] = phase(child, texts, args.queries, args.probes)

            started = time.perf_counter()
            published_at: list[float] = []

            def start() -> None:  # runs until the last document is published (at most --window in flight)
                ragbus(child, "reindex", "start", "--chunk-size", str(args.chunk_size), "--window", str(args.window),
                       *(["--model", model] if model else []))
                published_at.append(time.perf_counter())

            starter = threading.Thread(target=start, daemon=True)
            starter.start()
            ids = [d.document_id for d in wiring.build_store(child).list_documents(TENANT, 1_000_000)]
            deleted = ids[:: max(1, len(ids) // max(1, args.deletes))][:args.deletes]
            while not any(g.name == "g2" for g in wiring.build_store(child).generations()):
                time.sleep(0.2)
            if deleted:
                ragbus(child, "delete", *deleted, "--tenant", TENANT)
            during: list[dict[str, Any]] = []
            caught_up_at: list[float] = []

            def watch() -> None:
                starter.join()
                while not generation(child, "g2")["caught_up"]:
                    time.sleep(1.0)
                caught_up_at.append(time.perf_counter())

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            while watcher.is_alive():
                if args.quiet_rebuild:  # throughput alone, as a fresh ingest is measured: nothing else running
                    watcher.join()
                else:
                    during.append(phase(child, texts, args.queries, args.probes))
            g2_row = generation(child, "g2")
            rebuild_s = caught_up_at[0] - started
            result["rebuild"] = {"queued": g2_row["queued"], "window": args.window,
                                 "publish_s": round(published_at[0] - started, 1),
                                 "caught_up_s": round(rebuild_s, 1),
                                 "documents_per_s": round(g2_row["queued"] / rebuild_s, 2),
                                 "deleted_during": len(deleted), "rounds_measured": len(during)}
            result["during_rebuild"] = during
            ragbus(child, "reindex", "switch")
            time.sleep(1.5)
            problems = audit(child, args.chunk_size, deleted)
            result["audit"] = {"problems": len(problems), "first": problems[:10]}
            g2 = evaluate_set(child, args.set, ingest=False)
        os.environ["RAGBUS_DATA_DIR"] = str(Path(tmp) / "b")
        os.environ["RAGBUS_CHUNK_SIZE_TOKENS"] = str(args.chunk_size)
        if model:
            os.environ["RAGBUS_EMBEDDER_MODEL"] = model
        fresh_settings = Settings()
        with Stack(fresh_settings) as stack:
            child = stack.child_settings()
            fresh = evaluate_set(child, args.set, ingest=True)
            if deleted:  # the same documents gone, so both are scored on the same corpus
                ragbus(child, "delete", *deleted, "--tenant", TENANT)
                store = wiring.build_store(child)
                until = time.time() + 120
                while time.time() < until and not all(
                        (d := store.get_document(TENANT, i)) is not None and d.status.value == "deleted"
                        for i in deleted):
                    time.sleep(0.5)
            fresh_scored = evaluate_set(child, args.set, ingest=False)
    fresh_rate = fresh["documents_ingested"] / fresh["ingest_s"]
    result["fresh_ingest"] = {k: fresh[k] for k in ("documents_ingested", "ingest_s", "ndcg@10", "recall@10")}
    result["fresh_ingest"]["documents_per_s"] = round(fresh_rate, 2)
    result["rebuild"]["throughput_vs_fresh"] = round(result["rebuild"]["documents_per_s"] / fresh_rate, 3)
    diff = evaluate.versus(g2, fresh_scored)
    result["g2_vs_fresh"] = {"ndcg@10": [g2["ndcg@10"], fresh_scored["ndcg@10"]],
                             "recall@10": [g2["recall@10"], fresh_scored["recall@10"]],
                             "paired_diff_and_95ci": [round(x, 4) for x in diff] if diff else None}
    emit(result, args.json)
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
