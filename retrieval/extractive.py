"""The offline answerer: extracts the sentences of the retrieved chunks that best match the question.

Used when no Anthropic key is set. Every answer it gives is labelled `degraded: true` with the reason,
so nobody mistakes it for a generated answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from kernel.ports import GeneratedAnswer, OnDelta, Search, SearchHit, Turn
from schemas.events import Citation

PROMPT_VERSION = "extractive-1"
NO_KEY_REASON = "no Anthropic API key is set (RAGBUS_ANTHROPIC_API_KEY): offline extractive answer"
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n{2,}")
_STOP = frozenset(
    "a an and are as at be by can do does for from how i in is it of on or the to what when where "
    "which who why with you your this that there".split())


def _terms(text: str) -> set[str]:
    return {w for w in (m.group(0).lower() for m in _WORD.finditer(text)) if w not in _STOP and len(w) > 1}


def citations_from(hits: Sequence[SearchHit]) -> list[Citation]:
    return [Citation(rank=i, document_id=h.document_id, chunk_id=h.chunk_id, score=round(h.score, 6), text=h.text,
                     title=h.title, section_path=list(h.section_path)) for i, h in enumerate(hits, 1)]


class ExtractiveAnswerer:
    name = "extractive"
    prompt_version = PROMPT_VERSION

    def __init__(self, max_sentences: int = 3, reason: str = NO_KEY_REASON) -> None:
        self._max = max_sentences
        self._reason = reason

    def answer(self, question: str, hits: Sequence[SearchHit], *, on_delta: OnDelta | None = None,
               deadline_s: float | None = None, search: Search | None = None,
               history: Sequence[Turn] = ()) -> GeneratedAnswer:
        citations = citations_from(hits)
        if not hits:
            text = "No indexed document matches this question."
        else:
            wanted = _terms(question)
            scored = []
            for rank, hit in enumerate(hits[:3], 1):
                for pos, sentence in enumerate(s.strip() for s in _SENTENCE.split(hit.text)):
                    if len(sentence) < 20:
                        continue
                    overlap = len(wanted & _terms(sentence))
                    scored.append((overlap / (1 + 0.3 * (rank - 1)), -rank, -pos, rank, sentence))
            best = sorted(scored, reverse=True)[: self._max] or [(0, -1, 0, 1, hits[0].text[:400])]
            best.sort(key=lambda s: (s[3], -s[2]))
            text = " ".join(f"{s[4]} [{s[3]}]" for s in best)
        if on_delta is not None:
            on_delta(text)
        return GeneratedAnswer(text=text, citations=citations, model=self.name, prompt_version=PROMPT_VERSION,
                               degraded=True, degraded_reason=self._reason)
