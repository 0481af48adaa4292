"""Follow-up questions in context: nDCG@10 of elliptical follow-ups, searched as asked, as the answerer rewrites
them (offline rule, or Claude with a key), and as the hand-written standalone question (the ceiling).

    python bench/conversations.py [SET] [--out DIR] [--json OUT] [--claude] [--bus]

SET is a BEIR-layout set of hand-written questions (default ../shared/data/pydocs-faq-dev: the Python FAQ's own
questions, each judged relevant to its FAQ entry). The multi-turn set is derived from it by a fixed procedure,
never by hand-picking, and written to DIR (default bench/out/sets/<SET>-conversations; the corpus stays where it
is):

1. Each question's subject terms are its key terms (retrieval.conversation.key_terms), compared by stem; terms in
   more than 5% of the set's questions ("python", "use") are not subjects.
2. For every question Q2 (in file order) the first turn Q1 is the other question sharing the most subject terms
   with it; ties go to a question of the same FAQ page, then to the earlier one. A question sharing none with
   any other is left out.
3. The follow-up is Q2 with every word of a shared subject term removed and the first removed run replaced by
   "it" ("How do I kill a thread?" after a question about worker threads: "How do I kill it?"). It is judged
   as Q2 is (Q2's qrels): the hand-written Q2 is the standalone ceiling.

Each conversation is asked through the answerer's stage function (consumers/answerer.py: the rewriting, the
conversation store and the retrieval the stage runs on the bus, without Kafka) over the set's index
(bench/retrieval.py builds and keeps it): turn 1 with a conversation id, then turn 2 in the same conversation
(rewritten), then turn 2's text and Q2's text as standalone queries. Retrieve-only at top_k 100. With `--bus`
the same questions go through a running stack (`ragbus up`, or RAGBUS_KAFKA_BOOTSTRAP_SERVERS): the corpus is
ingested into a fresh tenant through the documents topic as `ragbus eval` does, and the turns are published on
the queries topic with plain query events (every turn 1, its answers awaited, then every turn 2 in its
conversation, then the raw and standalone questions without one), as an asking system would. The script also
writes the three ways of asking as BEIR sets (`eval-in-context`, `eval-raw`, `eval-standalone` in DIR) for
`ragbus eval`, which asks a set's turns in their conversations (`conversation_id` in queries.jsonl). Note the rule's
bias: step 3 removes exactly words the first turn names, which the offline rule carries back; follow-ups that
refer by other words, or change the subject, are harder than this set.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.retrieval import OUT, TENANT, kept_index, question_embedder
from bench.sets import page_of
from consumers.answerer import Answerer
from consumers.conversations import Conversations
from infra.ops.metrics import Metrics
from infra.settings import Settings
from infra.stores.conversations_sqlite import SqliteConversationStore
from infra.stores.sqlite import SqliteDocumentStore
from ragbus import wiring
from ragbus.evaluate import load_set
from retrieval.conversation import key_terms
from retrieval.evaluation import bootstrap_interval, documents, paired_difference, score
from retrieval.extractive import ExtractiveAnswerer
from retrieval.keywords import tokens
from retrieval.retriever import Retriever
from schemas.events import AnswerGenerated, QueryRequested

DEFAULT_SET = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "pydocs-faq-dev"
GENERIC_SHARE = 0.05


def _stems(text: str) -> set[str]:
    return {s for w in key_terms(text) for s in tokens(w)}


def follow_up(question: str, shared: set[str]) -> str:
    """The question with the words of shared subject terms removed, the first removed run said as "it"."""
    out: list[str] = []
    replaced = False
    for piece in re.split(r"(\s+)", question):
        word = re.sub(r"^\W+|\W+$", "", piece)
        if word and set(tokens(word)) and set(tokens(word)) <= shared:
            if not replaced:
                out.append("it" + piece[len(piece.rstrip("?.!,")):])
                replaced = True
            elif out and out[-1].startswith("it") and piece.endswith(("?", ".", "!")):
                out[-1] = out[-1] + piece[len(piece.rstrip("?.!")):]
            continue
        if piece.isspace() and out and out[-1].isspace():
            continue
        out.append(piece)
    text = "".join(out).strip()
    text = re.sub(r"\bit(\s+it)+\b", "it", text)
    return text[0].upper() + text[1:] if text else question


def build(directory: Path) -> list[dict[str, Any]]:
    """The conversations, by the procedure of the module docstring."""
    eval_set = load_set(directory)
    stems = {qid: _stems(text) for qid, text in eval_set.queries}
    counts = Counter(s for st in stems.values() for s in st)
    generic = {s for s, n in counts.items() if n > GENERIC_SHARE * len(eval_set.queries)}
    order = {qid: n for n, (qid, _) in enumerate(eval_set.queries)}
    texts = dict(eval_set.queries)
    conversations = []
    for qid, text in eval_set.queries:
        subject = stems[qid] - generic
        candidates = [(len(subject & (stems[o] - generic)), page_of(o) == page_of(qid), -order[o], o)
                      for o in texts if o != qid]
        best = max(candidates)
        if best[0] == 0:
            continue
        first = best[3]
        shared = subject & (stems[first] - generic)
        conversations.append({"id": f"conv-{order[qid]}", "turns": [
            {"id": first, "text": texts[first]},
            {"id": qid, "text": follow_up(text, shared), "standalone": text, "shared": sorted(shared)}]})
    return conversations


def write(conversations: list[dict[str, Any]], directory: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "conversations.jsonl").open("w", encoding="utf-8") as fh:
        for c in conversations:
            fh.write(json.dumps(c) + "\n")
    (out / "SOURCE").write_text(f"{directory.resolve()}\n(generated by bench/conversations.py; corpus and qrels "
                                "are the source set's)\n")


def write_eval_sets(conversations: list[dict[str, Any]], directory: Path, out: Path) -> list[Path]:
    """The three ways of asking as BEIR sets for `ragbus eval` (the corpus linked, not copied): the follow-ups
    in their conversations (turn 1 unjudged, asked for context), the follow-ups alone, the standalone questions."""
    eval_set = load_set(directory)
    made = []
    for name in ("in-context", "raw", "standalone"):
        target = out / f"eval-{name}"
        target.mkdir(parents=True, exist_ok=True)
        corpus = target / "corpus.jsonl"
        if corpus.is_symlink() or corpus.exists():
            corpus.unlink()
        corpus.symlink_to(eval_set.corpus.resolve())
        rows, judged = [], []
        for c in conversations:
            first, second = c["turns"]
            if name == "in-context":
                rows.append({"id": f"{c['id']}/1", "text": first["text"], "conversation_id": c["id"]})
                rows.append({"id": second["id"], "text": second["text"], "conversation_id": c["id"]})
            else:
                rows.append({"id": second["id"], "text": second["text" if name == "raw" else "standalone"]})
            judged.append(second["id"])
        (target / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        (target / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
            f"{q}\t{d}\t{score}\n" for q in judged for d, score in eval_set.judgements[q].items()), encoding="utf-8")
        made.append(target)
    return made


def measure(settings: Settings, directory: Path, conversations: list[dict[str, Any]],
            claude: bool) -> dict[str, Any]:
    eval_set = load_set(directory)
    built = kept_index(settings, directory)
    retriever = Retriever(question_embedder(settings), built.index, wiring.retrieval_config(settings))
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteDocumentStore(Path(tmp) / "db.sqlite")
        condenser = wiring.build_condenser(settings) if claude else None
        answerer = Answerer(retriever, ExtractiveAnswerer(), store, Metrics(), lambda _out: None, cache=None,
                            conversations=Conversations(SqliteConversationStore(
                                Path(tmp) / "db.sqlite", max_turns=settings.conversation.max_turns,
                                ttl_s=settings.conversation.ttl_s), condenser=condenser,
                                context_tokens=settings.conversation.context_tokens))

        def ask(text: str, conversation: str | None) -> AnswerGenerated:
            q = QueryRequested(tenant=TENANT, text=text, top_k=100, retrieve_only=True, conversation_id=conversation)
            return answerer.answer(q)

        rankings: dict[str, dict[str, list[str]]] = {"raw follow-up": {}, "rewritten": {}, "standalone": {}}
        examples = []
        started = time.perf_counter()
        for c in conversations:
            first, second = c["turns"]
            ask(first["text"], c["id"])
            rewritten = ask(second["text"], c["id"])
            rankings["rewritten"][second["id"]] = documents([x.document_id for x in rewritten.citations])
            for name, text in (("raw follow-up", second["text"]), ("standalone", second["standalone"])):
                rankings[name][second["id"]] = documents([x.document_id for x in ask(text, None).citations])
            examples.append({"follow_up": second["text"], "search_query": rewritten.search_query,
                             "standalone": second["standalone"]})
    judged = {c["turns"][1]["id"]: eval_set.judgements[c["turns"][1]["id"]] for c in conversations}
    scores = {name: score(r, judged) for name, r in rankings.items()}
    base = scores["raw follow-up"].ndcg10
    seconds = round(time.perf_counter() - started, 1)
    return {"set": str(directory), "conversations": len(conversations), "seconds": seconds,
            "rewriter": "claude" if claude else "offline", "examples": examples[:5],
            "results": {name: {"ndcg@10": round(sum(s.ndcg10) / len(s.ndcg10), 3),
                               "ci95": bootstrap_interval(s.ndcg10),
                               "recall@10": round(sum(s.recall10) / len(s.recall10), 3),
                               "vs_raw": paired_difference(base, s.ndcg10)} for name, s in scores.items()}}


def measure_on_bus(settings: Settings, directory: Path, conversations: list[dict[str, Any]]) -> dict[str, Any]:
    """The same measurement through the bus: the stack's answerer, rewriter and conversation store."""
    import uuid

    from ragbus.client import ask_many, new_correlation
    from ragbus.evaluate import corpus_events, ingest

    eval_set = load_set(directory)
    tenant = f"conv-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    problems = ingest(settings, corpus_events(settings, eval_set, tenant, new_correlation()), 3600, lambda: None)
    if problems:
        raise SystemExit(f"ingest failed: {problems[:3]}")
    ingest_s = round(time.perf_counter() - started, 1)

    def ask(texts: dict[str, tuple[str, str | None]]) -> dict[str, AnswerGenerated]:
        queries = [QueryRequested(tenant=tenant, query_id=key, text=text, top_k=100, retrieve_only=True,
                                  conversation_id=conversation) for key, (text, conversation) in texts.items()]
        answers = ask_many(settings, queries, 600)
        missing = [q.query_id for q in queries if q.query_id not in answers]
        if missing:
            raise SystemExit(f"{len(missing)} queries unanswered, e.g. {missing[:3]}")
        return answers

    run = uuid.uuid4().hex[:6]
    started = time.perf_counter()
    ask({f"{run}/{c['id']}/1": (c["turns"][0]["text"], f"{run}/{c['id']}") for c in conversations})
    second = ask({f"{run}/{c['id']}/2": (c["turns"][1]["text"], f"{run}/{c['id']}") for c in conversations})
    alone = ask({f"{run}/{c['id']}/{name}": (c["turns"][1][field], None) for c in conversations
                 for name, field in (("raw", "text"), ("standalone", "standalone"))})
    rankings: dict[str, dict[str, list[str]]] = {"raw follow-up": {}, "rewritten": {}, "standalone": {}}
    for c in conversations:
        qid = c["turns"][1]["id"]
        for name, answer in (("rewritten", second[f"{run}/{c['id']}/2"]),
                             ("raw follow-up", alone[f"{run}/{c['id']}/raw"]),
                             ("standalone", alone[f"{run}/{c['id']}/standalone"])):
            rankings[name][qid] = documents([x.document_id for x in answer.citations])
    examples = [{"follow_up": c["turns"][1]["text"], "search_query": second[f"{run}/{c['id']}/2"].search_query,
                 "standalone": c["turns"][1]["standalone"]} for c in conversations[:5]]
    judged = {c["turns"][1]["id"]: eval_set.judgements[c["turns"][1]["id"]] for c in conversations}
    scores = {name: score(r, judged) for name, r in rankings.items()}
    base = scores["raw follow-up"].ndcg10
    return {"set": str(directory), "conversations": len(conversations), "tenant": tenant, "ingest_s": ingest_s,
            "seconds": round(time.perf_counter() - started, 1), "rewriter": "the stack's (through the bus)",
            "examples": examples,
            "results": {name: {"ndcg@10": round(sum(s.ndcg10) / len(s.ndcg10), 3),
                               "ci95": bootstrap_interval(s.ndcg10),
                               "recall@10": round(sum(s.recall10) / len(s.recall10), 3),
                               "vs_raw": paired_difference(base, s.ndcg10)} for name, s in scores.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("set", type=Path, nargs="?", default=DEFAULT_SET)
    ap.add_argument("--out", type=Path, help="where the conversation set is written")
    ap.add_argument("--json", type=Path, metavar="OUT", help="also write every figure here")
    ap.add_argument("--claude", action="store_true", help="rewrite with Claude (needs RAGBUS_ANTHROPIC_API_KEY)")
    ap.add_argument("--bus", action="store_true", help="through a running stack (its settings: RAGBUS_DATA_DIR, "
                                                       "or RAGBUS_KAFKA_BOOTSTRAP_SERVERS)")
    args = ap.parse_args()
    settings = Settings()
    if args.claude and settings.anthropic.api_key is None:
        ap.error("--claude needs RAGBUS_ANTHROPIC_API_KEY (or ANTHROPIC_API_KEY)")
    conversations = build(args.set)
    out = args.out or OUT / "sets" / f"{args.set.name}-conversations"
    write(conversations, args.set, out)
    print("for ragbus eval: " + " ".join(str(p) for p in write_eval_sets(conversations, args.set, out)))
    report = (measure_on_bus(settings, args.set, conversations) if args.bus
              else measure(settings, args.set, conversations, args.claude))
    print(f"{report['conversations']} two-turn conversations from {args.set} ({report['rewriter']} rewriting, "
          f"{report['seconds']} s)")
    for name, r in report["results"].items():
        lo, hi = r["ci95"]
        d = r["vs_raw"]
        print(f"  {name:14} nDCG@10 {r['ndcg@10']:.3f} [{lo:.3f}, {hi:.3f}]  recall@10 {r['recall@10']:.3f}  "
              f"vs raw {d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]")
    for e in report["examples"]:
        print(f"  e.g. {e['follow_up']!r} -> {e['search_query']!r} (standalone: {e['standalone']!r})")
    if args.json:
        args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), **report}, indent=1))


if __name__ == "__main__":
    main()
