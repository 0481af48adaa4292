"""Structure-aware, token-aware chunking (pure functions, no I/O).

Documents are first cut into sections along their own structure (Markdown/HTML headings, PDF pages),
so a chunk never straddles two sections and carries its section path. Each section is then split by
`semantic-text-splitter` using the embedding model's own tokenizer, preferring paragraph, then
sentence, then word boundaries, with a configurable token overlap.
"""

from __future__ import annotations

import io
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bs4 import BeautifulSoup
from markdown_it import MarkdownIt
from semantic_text_splitter import MarkdownSplitter, TextSplitter

from infra.errors import PoisonMessageError
from schemas.events import Chunk, ContentType

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
    """Cut Markdown at its headings; each section keeps the path of headings above it."""
    lines = text.splitlines()
    tokens = MarkdownIt("commonmark").parse(text)
    heads: list[tuple[int, int, int, str]] = []  # (start line, end line, level, title)
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open" and tok.map:
            title = tokens[i + 1].content if i + 1 < len(tokens) else ""
            heads.append((tok.map[0], tok.map[1], int(tok.tag[1]), _clean_heading(title)))
    sections: list[Section] = []
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
        start = h_end
    body = "\n".join(lines[start:]).strip()
    if body:
        sections.append(Section(path, body))
    return sections


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


class Chunker:
    """Splits documents into chunks of at most `size` tokens of the embedding model's tokenizer."""

    def __init__(self, tokenizer: Any, size: int, overlap: int) -> None:
        if overlap >= size:
            raise ValueError(f"chunk overlap {overlap} must be below chunk size {size}")
        self._tok = tokenizer
        self._md = MarkdownSplitter.from_huggingface_tokenizer(tokenizer, size, overlap)
        self._text = TextSplitter.from_huggingface_tokenizer(tokenizer, size, overlap)

    def sections(self, content_type: ContentType, content: str | bytes) -> list[Section]:
        if content_type is ContentType.PDF:
            if not isinstance(content, bytes):
                raise PoisonMessageError("application/pdf content must be bytes")
            return pdf_sections(content)
        text = check_text(content if isinstance(content, str) else decode_bytes(content))
        if content_type is ContentType.MARKDOWN:
            return markdown_sections(text)
        if content_type is ContentType.HTML:
            return html_sections(text)
        return [Section((), text.strip())] if text.strip() else []

    def _pieces(self, content_type: ContentType, sections: list[Section]) -> Iterator[tuple[tuple[str, ...], str]]:
        splitter = self._md if content_type in (ContentType.MARKDOWN, ContentType.HTML) else self._text
        for section in sections:
            for piece in splitter.chunks(section.text):
                if piece.strip():
                    yield section.path, piece

    def chunk(self, content_type: ContentType, content: str | bytes) -> list[Chunk]:
        pieces = list(self._pieces(content_type, self.sections(content_type, content)))
        if not pieces:
            raise PoisonMessageError("document has no text to index after parsing (empty or only markup)")
        counts = [len(e.ids) for e in self._tok.encode_batch([p for _, p in pieces], add_special_tokens=False)]
        return [Chunk(index=i, text=text, section_path=list(path), token_count=n)
                for i, ((path, text), n) in enumerate(zip(pieces, counts, strict=True))]


def embedding_text(title: str, section_path: list[str], text: str) -> str:
    """What is embedded: the chunk with its title and section path as context (contextual header)."""
    header = " > ".join([p for p in [title, *section_path] if p])
    return f"{header}\n{text}" if header else text
