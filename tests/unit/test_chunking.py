from __future__ import annotations

import pytest

from chunking.sections import html_sections, markdown_sections
from chunking.splitter import Chunker, embedding_text
from infra.models.embedder import load_tokenizer
from kernel.errors import PoisonMessageError
from schemas.events import ContentType
from tests.pdf import tiny_pdf


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return load_tokenizer("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def chunker(tokenizer) -> Chunker:  # type: ignore[no-untyped-def]
    return Chunker(tokenizer, 64, 16)


MD = """# Guide

Intro paragraph.

## Install

Run the installer.

### On Linux

Use the package manager.

## Usage

Call the tool.
"""


def test_markdown_sections_keep_heading_paths() -> None:
    sections = markdown_sections(MD)
    assert [(s.path, s.text) for s in sections] == [
        (("Guide",), "Intro paragraph."),
        (("Guide", "Install"), "Run the installer."),
        (("Guide", "Install", "On Linux"), "Use the package manager."),
        (("Guide", "Usage"), "Call the tool."),
    ]


def test_html_headings_become_section_paths() -> None:
    html = ("<html><head><title>x</title><style>p{}</style></head><body><h1>Top</h1><p>One.</p>"
            "<h2>Sub</h2><p>Two.</p><script>evil()</script></body></html>")
    assert [(s.path, s.text) for s in html_sections(html)] == [(("Top",), "One."), (("Top", "Sub"), "Two.")]


#: Words that never repeat, so an overlap can only come from the splitter copying text across chunks.
UNIQUE = " ".join(f"w{i}x" for i in range(1500))


def test_chunks_respect_the_token_budget(chunker: Chunker, tokenizer) -> None:  # type: ignore[no-untyped-def]
    chunks = chunker.chunk(ContentType.TEXT, UNIQUE)
    assert len(chunks) > 5
    assert all(len(tokenizer.encode(c.text, add_special_tokens=False).ids) <= 64 for c in chunks)
    assert [c.index for c in chunks] == list(range(len(chunks)))


@pytest.mark.parametrize("overlap", [0, 16])
def test_neighbouring_chunks_overlap_by_the_configured_tokens(tokenizer, overlap: int) -> None:  # type: ignore[no-untyped-def]
    chunks = Chunker(tokenizer, 64, overlap).chunk(ContentType.TEXT, UNIQUE)
    for before, after in zip(chunks, chunks[1:], strict=False):
        a, b = before.text.split(), after.text.split()
        shared = next((n for n in range(min(len(a), len(b)), 0, -1) if a[-n:] == b[:n]), 0)
        if overlap == 0:
            assert shared == 0 and int(b[0][1:-1]) == int(a[-1][1:-1]) + 1  # contiguous, nothing repeated
        else:
            assert shared > 0  # the next chunk starts with the words this one ended with
            assert len(tokenizer.encode(" ".join(b[:shared]), add_special_tokens=False).ids) <= overlap


def test_chunks_never_straddle_sections(chunker: Chunker) -> None:
    chunks = chunker.chunk(ContentType.MARKDOWN, MD)
    assert [c.section_path for c in chunks] == [["Guide"], ["Guide", "Install"], ["Guide", "Install", "On Linux"],
                                                ["Guide", "Usage"]]


def test_pdf_pages_become_sections(chunker: Chunker) -> None:
    chunks = chunker.chunk(ContentType.PDF, tiny_pdf(["Kafka keeps order per partition.", "Second page text."]))
    assert [(c.section_path, c.text) for c in chunks] == [
        (["page 1"], "Kafka keeps order per partition."), (["page 2"], "Second page text.")]


def test_broken_pdf_is_poison(chunker: Chunker) -> None:
    with pytest.raises(PoisonMessageError, match="cannot read PDF"):
        chunker.chunk(ContentType.PDF, b"%PDF-1.4 this is not a pdf")


@pytest.mark.parametrize("text", ["", "   \n\n ", "<html><body><script>x()</script></body></html>"])
def test_empty_documents_are_poison(chunker: Chunker, text: str) -> None:
    with pytest.raises(PoisonMessageError, match="no text"):
        chunker.chunk(ContentType.HTML, text)


@pytest.mark.parametrize(("kind", "text"), [(ContentType.MARKDOWN, "# Release notes\n\n## 2.0\n"),
                                            (ContentType.HTML, "<h1>Release notes</h1><h2>2.0</h2>")])
def test_a_document_of_headings_only_is_its_headings(chunker: Chunker, kind: ContentType, text: str) -> None:
    chunks = chunker.chunk(kind, text)
    assert [(c.text, c.section_path) for c in chunks] == [("Release notes", ["Release notes"]),
                                                          ("2.0", ["Release notes", "2.0"])]


def test_binary_claiming_to_be_text_is_poison(chunker: Chunker) -> None:
    with pytest.raises(PoisonMessageError, match="looks binary"):
        chunker.chunk(ContentType.TEXT, "".join(chr(i % 32) for i in range(2000)))


def test_many_scripts_and_emoji_survive(chunker: Chunker) -> None:
    text = "Kafka 🚀 カフカ は分散ログです。 Кафка — журнал. كافكا سجل موزع. काफ़्का 😀 λόγος."
    chunks = chunker.chunk(ContentType.TEXT, text)
    assert "".join(c.text for c in chunks).replace(" ", "") == text.replace(" ", "")


def test_embedding_text_carries_title_and_section() -> None:
    assert embedding_text("Guide", ["Install"], "Run it.") == "Guide > Install\nRun it."
    assert embedding_text("", [], "Run it.") == "Run it."
