"""Structure-aware, token-aware chunking (pure functions, no I/O).

Documents are first cut into sections along their own structure (Markdown/HTML headings, PDF pages),
so a chunk never straddles two sections and carries its section path. Each section is then split by
`semantic-text-splitter` using the embedding model's own tokenizer, preferring paragraph, then
sentence, then word boundaries, with a configurable token overlap.
"""

from __future__ import annotations

from collections.abc import Iterator

from semantic_text_splitter import MarkdownSplitter, TextSplitter
from tokenizers import Tokenizer

from kernel.errors import PoisonMessageError
from schemas.events import SECTION_TEXT_MAX_CHARS, Chunk, ContentType, SectionLead

from .sections import Section, check_text, decode_bytes, html_sections, markdown_sections, pdf_sections


class Chunker:
    """Splits documents into chunks of at most `size` tokens of the embedding model's tokenizer."""

    def __init__(self, tokenizer: Tokenizer, size: int, overlap: int) -> None:
        if overlap >= size:
            raise ValueError(f"chunk overlap {overlap} must be below chunk size {size}")
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

    def _pieces(self, content_type: ContentType, sections: list[Section]
                ) -> Iterator[tuple[int, Section, str]]:
        splitter = self._md if content_type in (ContentType.MARKDOWN, ContentType.HTML) else self._text
        number = 0
        for section in sections:
            pieces = [p for p in splitter.chunks(section.text) if p.strip()]
            for piece in pieces:
                yield number, section, piece
            number += bool(pieces)

    def split(self, content_type: ContentType, content: str | bytes) -> tuple[list[Chunk], list[SectionLead]]:
        """Chunks, and one entry per section that has chunks (its heading path and lead text).

        The splitter counts tokens as it cuts, so each chunk is at most `size` tokens without a second
        pass of the tokenizer."""
        pieces = list(self._pieces(content_type, self.sections(content_type, content)))
        if not pieces:
            raise PoisonMessageError("document has no text to index after parsing (empty or only markup)")
        chunks = [Chunk(index=i, text=text, section_path=list(section.path), section=number)
                  for i, (number, section, text) in enumerate(pieces)]
        leads: dict[int, SectionLead] = {}
        for number, section, _ in pieces:
            if number not in leads:
                leads[number] = SectionLead(section=number, text=lead(section.text),
                                            section_path=list(section.path))
        return chunks, list(leads.values())

    def chunk(self, content_type: ContentType, content: str | bytes) -> list[Chunk]:
        return self.split(content_type, content)[0]


def lead(text: str, limit: int = SECTION_TEXT_MAX_CHARS) -> str:
    """The start of a section, at most `limit` characters, cut at a word boundary when there is one."""
    text = text.strip()
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ", limit // 2)
    return cut[:space] if space > 0 else cut


def embedding_text(title: str, section_path: list[str], text: str) -> str:
    """What is embedded: the chunk with its title and section path as context (contextual header)."""
    header = " > ".join([p for p in [title, *section_path] if p])
    return f"{header}\n{text}" if header else text
