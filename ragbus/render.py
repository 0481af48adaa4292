"""How the CLI and the demo print things: an answer (text, degraded reason, numbered citations), and
consumer-group lag."""

from __future__ import annotations

from typing import Any

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


def print_groups(groups: list[dict[str, Any]] | str) -> None:
    """Consumer-group lag from Kafka: committed offsets against high-water marks, per stage."""
    if isinstance(groups, str):
        typer.echo(f"consumer groups: {groups}")
        return
    typer.echo("consumer groups (lag from Kafka: high-water mark minus committed offset):")
    for g in groups:
        lag = "unknown (no high-water mark in time)" if g["lag"] is None else str(g["lag"])
        members = f", {g['members']} members" if g["members"] else ""
        never = sum(1 for p in g["partitions"] if p["committed"] is None)
        uncommitted = f", {never} partitions never committed" if never else ""
        typer.echo(f"  {g['stage']:<9} {g['group']} ({g['state']}{members}): lag {lag} on "
                   f"{len(g['partitions'])} partitions{uncommitted}")
