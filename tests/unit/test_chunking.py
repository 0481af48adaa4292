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


def test_chunks_respect_the_token_budget_and_overlap(chunker: Chunker, tokenizer) -> None:  # type: ignore[no-untyped-def]
    text = " ".join(f"Sentence number {i} talks about Kafka partitions and offsets." for i in range(200))
    chunks = chunker.chunk(ContentType.TEXT, text)
    assert len(chunks) > 5
    assert all(len(tokenizer.encode(c.text, add_special_tokens=False).ids) <= 64 for c in chunks)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    # overlap: each chunk starts with words the previous one ended with
    assert any(chunks[i + 1].text.split()[0] in chunks[i].text.split()[-20:] for i in range(len(chunks) - 1))


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
