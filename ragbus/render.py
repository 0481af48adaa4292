"""How the CLI and the demo print things: an answer (text, degraded reason, numbered citations), and
consumer-group lag.

Streamed deltas are a preview: a model that fails mid-stream is followed by its fallback's deltas, and
the final `answer.generated` carries citation markers the deltas never had. So the CLI prints exactly the
final answer on stdout, always; on a terminal the deltas are shown meanwhile as a transient preview (on
stderr) that the final answer replaces.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

import typer
from rich.console import Console
from rich.live import Live
from rich.text import Text

from schemas.events import AnswerDelta, AnswerGenerated


class StreamView:
    """Shows the deltas of one answer as a live preview (only on a terminal), in `seq` order."""

    def __init__(self, preview: bool | None = None, out: TextIO | None = None) -> None:
        self._out = out
        self._pieces: dict[int, str] = {}
        self._live: Live | None = None
        self._preview = sys.stderr.isatty() and sys.stdout.isatty() if preview is None else preview

    @property
    def preview_text(self) -> str:
        return "".join(self._pieces[s] for s in sorted(self._pieces))

    def delta(self, delta: AnswerDelta) -> None:
        self._pieces[delta.seq] = delta.text
        if not self._preview:
            return
        if self._live is None:
            self._live = Live(console=Console(stderr=True), transient=True, auto_refresh=False)
            self._live.start()
        self._live.update(Text(self.preview_text, style="dim"), refresh=True)

    def finish(self, answer: AnswerGenerated) -> None:
        """Replace the preview with the final answer, printed exactly."""
        if self._live is not None:
            self._live.stop()
            self._live = None
        print_answer(answer, out=self._out)


def print_answer(answer: AnswerGenerated, out: TextIO | None = None) -> None:
    def echo(text: str) -> None:
        typer.echo(text, file=out)

    echo(answer.answer or "(retrieval only)")
    if answer.degraded:
        echo(f"\n[degraded: {answer.degraded_reason}]")
    if answer.turn > 1:  # a follow-up: say what it was searched as, and what context the model lacked
        dropped = f"; {answer.dropped_turns} earlier turns left out of the context" if answer.dropped_turns else ""
        echo(f"\n[turn {answer.turn} of {answer.conversation_id}, searched as: {answer.search_query}{dropped}]")
    if answer.citations:
        echo("\nCitations:")
    for c in answer.citations:
        where = " > ".join([c.title, *c.section_path]) if (c.title or c.section_path) else ""
        snippet = " ".join(c.text.split())[:160]
        echo(f"  [{c.rank}] {c.document_id}" + (f" ({where})" if where else "") +
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
