"""Documents cut along their own structure (pure functions, no I/O): Markdown and HTML headings, PDF pages.

Each section keeps the path of headings above it, so a chunk never straddles two sections and knows
where it sits in its document.
"""

from __future__ import annotations

import io
import re
import unicodedata
from dataclasses import dataclass

from bs4 import BeautifulSoup
from markdown_it import MarkdownIt

from kernel.errors import PoisonMessageError

MAX_SECTION_DEPTH = 16
_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")
#: Share of control characters (besides tab/newline) above which "text" is really binary.
_BINARY_RATIO = 0.01


@dataclass(frozen=True)
class Section:
    path: tuple[str, ...]
    text: str


def _clean_heading(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()[:200]


def markdown_sections(text: str) -> list[Section]:
    """Cut Markdown at its headings; each section keeps the path of headings above it. A document of
    headings only (an outline, a title page) is its headings: each becomes a section of its own text."""
    lines = text.splitlines()
    tokens = MarkdownIt("commonmark").parse(text)
    heads: list[tuple[int, int, int, str]] = []  # (start line, end line, level, title)
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open" and tok.map:
            title = tokens[i + 1].content if i + 1 < len(tokens) else ""
            heads.append((tok.map[0], tok.map[1], int(tok.tag[1]), _clean_heading(title)))
    sections: list[Section] = []
    titles: list[Section] = []
    stack: list[tuple[int, str]] = []
    start = 0
    path: tuple[str, ...] = ()
    for h_start, h_end, level, title in heads:
        body = "\n".join(lines[start:h_start]).strip()
        if body:
            sections.append(Section(path, body))
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, title))
        path = tuple(t for _, t in stack)[:MAX_SECTION_DEPTH]
        if title:
            titles.append(Section(path, title))
        start = h_end
    body = "\n".join(lines[start:]).strip()
    if body:
        sections.append(Section(path, body))
    return sections or titles


def html_sections(html: str) -> list[Section]:
    """HTML to Markdown-like text (headings become `#` lines), then cut like Markdown."""
    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "head"]):
        tag.decompose()
    for tag in soup.find_all(_HEADINGS):
        level = int(tag.name[1])
        tag.replace_with(f"\n\n{'#' * level} {_clean_heading(tag.get_text(' '))}\n\n")
    for tag in soup.find_all(["p", "li", "pre", "blockquote", "tr", "br", "div", "section", "article"]):
        tag.insert_after("\n\n")
    text = re.sub(r"\n{3,}", "\n\n", soup.get_text())
    return markdown_sections(text)


def pdf_sections(data: bytes) -> list[Section]:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PyPdfError, ValueError, KeyError, TypeError) as exc:
        raise PoisonMessageError(f"cannot read PDF: {type(exc).__name__}: {exc}") from exc
    return [Section((f"page {n}",), text.strip()) for n, text in enumerate(pages, 1) if text.strip()]


def check_text(text: str) -> str:
    """Normalise to NFC and refuse binary content that claims to be text."""
    if not text:
        return text
    controls = sum(1 for c in text if unicodedata.category(c) == "Cc" and c not in "\n\r\t\f")
    if controls / len(text) > _BINARY_RATIO:
        raise PoisonMessageError(
            f"content looks binary: {controls} control characters in {len(text)}; send real text or a PDF")
    return unicodedata.normalize("NFC", text.replace("\x00", ""))


def decode_bytes(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PoisonMessageError(f"content is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
