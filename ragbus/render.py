"""How the CLI and the demo print an answer: text, degraded reason, numbered citations."""

from __future__ import annotations

import typer

from schemas.events import AnswerGenerated


def print_answer(answer: AnswerGenerated, streamed: bool) -> None:
    if not streamed:
        typer.echo(answer.answer or "(retrieval only)")
    if answer.degraded:
        typer.echo(f"\n[degraded: {answer.degraded_reason}]")
    if answer.citations:
        typer.echo("\nCitations:")
    for c in answer.citations:
        where = " > ".join([c.title, *c.section_path]) if (c.title or c.section_path) else ""
        snippet = " ".join(c.text.split())[:160]
        typer.echo(f"  [{c.rank}] {c.document_id}" + (f" ({where})" if where else "") +
                   f"  score {c.score:.3f}\n      {snippet}")
