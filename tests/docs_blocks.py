"""Fenced code blocks of the documentation, so tests can check and run the examples it shows."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    code: str

    def where(self) -> str:
        return f"{self.path.name}:{self.line}"


def blocks(path: Path, lang: str | None = None) -> list[Block]:
    text = path.read_text()
    found = [Block(path, text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2)) for m in _FENCE.finditer(text)]
    return [b for b in found if lang is None or b.lang == lang]
