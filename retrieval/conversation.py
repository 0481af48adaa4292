"""Conversations, the domain half: a follow-up rewritten into a standalone search query, and earlier turns fitted
into the model's token budget. Pure functions over turns; no I/O.

The offline rewrite is a deterministic rule, good enough to measure (bench/conversations.py, bench/RESULTS.md
"Issue 28"): a follow-up ("and on Windows?", "how do I kill it?") usually leaves out the subject its previous turn
named, so the search query is the follow-up followed by the key terms of the previous turn's search query that
it does not contain already (compared by stem). The previous *search query* is used, not its question, so a
subject carries through several elliptical turns; at most MAX_CARRIED terms are carried, so it cannot grow. A
follow-up that changes the subject keeps the old terms too: that is the rule's known weakness, which Claude's
rewriting (RAGBUS_CONVERSATION_REWRITE=auto with a key) does not share.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from kernel.ports import Turn
from schemas.events import QUESTION_MAX_CHARS

from .keywords import STOP_WORDS, _fold, tokens

#: Terms of the previous turn's search query carried into a follow-up at most.
MAX_CARRIED = 12
#: Words that ask rather than name a subject: never carried.
QUESTION_WORDS = frozenset(
    "what which who whom whose when where why how do does did done can could should would shall may might must "
    "i me my you your we our us he she him her his its them they theirs this those these about also else other "
    "then so any some more most many much here please tell explain show give get got use using used way ways "
    "thing things out up off just very like there have has had be been being am doesn don isn aren wasn weren won "
    "can cannot couldn shouldn wouldn".split())
_WORD = re.compile(r"[a-z0-9][a-z0-9_.+-]*[a-z0-9+]|[a-z0-9]")
_MARKER = re.compile(r"\s?\[\d+\]")
#: Characters per token of the budget's estimate (the usual figure for English text and Claude's tokenizer).
CHARS_PER_TOKEN = 4


def key_terms(text: str) -> list[str]:
    """The words of a text that name its subject, in order, one per stem: no stop words, no question words."""
    seen: set[tuple[str, ...]] = set()
    out: list[str] = []
    for word in _WORD.findall(_fold(text)):
        if word in STOP_WORDS or word in QUESTION_WORDS or len(word) < 2:
            continue
        stem = tuple(tokens(word))
        if stem and stem not in seen:
            seen.add(stem)
            out.append(word)
    return out


def standalone(follow_up: str, history: Sequence[Turn]) -> str:
    """The offline rule: the follow-up, then the previous turn's key terms it lacks (none: the follow-up)."""
    if not history:
        return follow_up
    previous = history[-1].search_query or history[-1].question
    have = set(tokens(follow_up))
    carried = [w for w in key_terms(previous) if not set(tokens(w)) <= have][:MAX_CARRIED]
    if not carried:
        return follow_up
    return f"{follow_up.rstrip()} {' '.join(carried)}"[:QUESTION_MAX_CHARS]


def estimate_tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


def plain_answer(answer: str) -> str:
    """A turn's answer as prior context: without its [n] markers, which referred to that turn's sources."""
    return _MARKER.sub("", answer).strip()


def fit(history: Sequence[Turn], budget_tokens: int) -> tuple[list[Turn], int]:
    """The newest turns whose questions and answers fit the budget together, oldest first, and how many older
    ones were left out. A turn that does not fit ends the walk: context is never given with a gap in it."""
    kept: list[Turn] = []
    used = 0
    for turn in reversed(history):
        cost = estimate_tokens(turn.question) + estimate_tokens(plain_answer(turn.answer))
        if used + cost > budget_tokens:
            break
        kept.append(turn)
        used += cost
    kept.reverse()
    return kept, len(history) - len(kept)


def rewrite_request(follow_up: str, history: Sequence[Turn], budget_tokens: int) -> str:
    """What a model rewriting the follow-up reads: the turns that fit the budget, then the follow-up."""
    kept, _ = fit(history, budget_tokens)
    lines = [f"User: {t.question}\nAssistant: {plain_answer(t.answer)[:1_000]}" for t in kept]
    return "Conversation so far:\n" + "\n".join(lines) + f"\n\nFollow-up question: {follow_up}"


def context_digest_material(search_query: str, history: Sequence[Turn]) -> list[str]:
    """What an answer computed in a conversation depends on besides the question and its sources: the search
    query and the turns the model was given (the answer cache is keyed by it)."""
    return [search_query, *(f"{t.question}\x1e{t.answer}" for t in history)]
