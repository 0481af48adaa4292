"""Documents by URL chunk like inline ones (Markdown, HTML, PDF), and every way a URL's content can be
wrong ends in a reason that says what to fix."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from chunking.splitter import Chunker
from infra import content
from infra.models.embedder import load_tokenizer
from infra.settings import FetchSettings
from kernel.errors import FetchError, PoisonMessageError
from kernel.ports import ContentFetcher
from schemas.events import ChunksProduced, DocumentArrived, content_hash
from schemas.topics import TOPICS
from streams.chunker import chunk_event
from tests.https_server import HttpsServer
from tests.pdf import tiny_pdf

MARKDOWN = "# Owls\n\nOwls turn their heads 270 degrees.\n\n## Diet\n\nMice, mostly."
HTML = "<html><body><h1>Owls</h1><p>Owls turn their heads 270 degrees.</p><h2>Diet</h2><p>Mice, mostly.</p>"


@pytest.fixture(scope="module")
def chunker() -> Chunker:
    return Chunker(load_tokenizer("all-MiniLM-L6-v2"), 64, 8)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[HttpsServer]:
    with HttpsServer(tmp_path) as s:
        yield s


def fetcher(server: HttpsServer) -> ContentFetcher:
    return content.build(FetchSettings(allowed_urls=[server.url("/")], allow_private_addresses=True,
                                       ca_bundle=server.ca_file, retries=0, timeout_s=5))


def no_store(ref: object) -> bytes:
    raise AssertionError("the claim-check store is not used for content_url")


def chunks(event: DocumentArrived, chunker: Chunker, fetch: ContentFetcher | None) -> list[ChunksProduced]:
    return [o.event for o in chunk_event(event, chunker, no_store, fetch) if o.topic is TOPICS.chunks]  # type: ignore[misc]


@pytest.mark.parametrize(("media_type", "declared", "body"), [
    ("text/markdown; charset=utf-8", "text/markdown", MARKDOWN.encode()),
    ("text/html; charset=iso-8859-1", "text/html", HTML.replace("Mice", "Mäuse").encode("iso-8859-1")),
    ("application/octet-stream", "text/html", HTML.encode()),
])
def test_text_by_url_chunks_like_inline_text(server: HttpsServer, chunker: Chunker, media_type: str, declared: str,
                                             body: bytes) -> None:
    url = server.route("/owls", body, content_type=media_type)
    inline_text = body.decode("iso-8859-1" if "8859" in media_type else "utf-8")
    by_url = chunks(DocumentArrived(document_id="owls", version=1, content_type=declared, content_url=url),
                    chunker, fetcher(server))
    inline = chunks(DocumentArrived(document_id="owls", version=1, content_type=declared, text=inline_text),
                    chunker, None)
    own = {"event_id", "occurred_at", "correlation_id", "document_occurred_at"}  # differ per event
    assert [c.model_dump(exclude=own) for c in by_url] == [c.model_dump(exclude=own) for c in inline]
    assert by_url[0].chunks[0].section_path == ["Owls"]


def test_a_pdf_by_url_is_split_by_page(server: HttpsServer, chunker: Chunker) -> None:
    pdf = tiny_pdf(["Owls turn their heads.", "Mice are their food."])
    url = server.route("/owls.pdf", pdf, content_type="application/pdf")
    event = DocumentArrived(document_id="owls.pdf", content_type="application/pdf", content_url=url,
                            content_sha256=content_hash(pdf))
    [part] = chunks(event, chunker, fetcher(server))
    assert [c.section_path for c in part.chunks] == [["page 1"], ["page 2"]]
    assert part.content_hash == content_hash(pdf)


def test_a_file_url_under_a_root_is_read(tmp_path: Path, chunker: Chunker) -> None:
    (tmp_path / "owls.md").write_text(MARKDOWN)
    fetch = content.build(FetchSettings(file_roots=[tmp_path]))
    url = (tmp_path / "owls.md").as_uri()
    event = DocumentArrived(document_id="owls", content_type="text/markdown", content_url=url)
    assert chunks(event, chunker, fetch)[0].total_chunks == 2


@pytest.mark.parametrize(("served", "declared", "body", "reason"), [
    ("text/html", "application/pdf", b"<h1>not a pdf</h1>",
     "is text/html according to its source, but the event's content_type is application/pdf: expected one of "
     "application/pdf, application/x-pdf"),
    ("application/octet-stream", "application/pdf", b"<h1>not a pdf</h1>", "is not a PDF (it does not start"),
    ("application/octet-stream", "text/plain", tiny_pdf(["x"]), "is a PDF, but the event's content_type is "
     "text/plain: expected application/pdf"),
    ("image/png", "text/markdown", b"\x89PNG", "is image/png according to its source"),
    ("text/plain; charset=utf-8", "text/plain", b"caf\xe9",
     "is not utf-8 text (unexpected end of data at byte 3); declare its charset"),
    ("text/plain; charset=klingon", "text/plain", b"abc", "declares an unknown charset 'klingon'"),
])
def test_content_that_is_not_what_the_event_says_is_refused(server: HttpsServer, chunker: Chunker, served: str,
                                                            declared: str, body: bytes, reason: str) -> None:
    url = server.route("/doc", body, content_type=served)
    event = DocumentArrived(document_id="d", content_type=declared, content_url=url)
    with pytest.raises(PoisonMessageError) as caught:
        chunk_event(event, chunker, no_store, fetcher(server))
    assert f"content_url {url} " in str(caught.value) and reason in str(caught.value)


def test_content_that_changed_since_it_was_pinned_is_refused(server: HttpsServer, chunker: Chunker) -> None:
    url = server.route("/doc.md", b"# New text", content_type="text/markdown")
    event = DocumentArrived(document_id="d", content_type="text/markdown", content_url=url,
                            content_sha256=content_hash(b"# Old text"))
    with pytest.raises(PoisonMessageError, match="the content changed since the event was published"):
        chunk_event(event, chunker, no_store, fetcher(server))


def test_without_configured_sources_a_url_is_refused_with_how_to_allow_it(chunker: Chunker) -> None:
    event = DocumentArrived(document_id="d", content_url="https://files.example.com/a.md?token=SECRET")
    with pytest.raises(FetchError) as caught:
        chunk_event(event, chunker, no_store, None)
    assert "RAGBUS_FETCH_ALLOWED_URLS" in str(caught.value) and "SECRET" not in str(caught.value)
    with pytest.raises(FetchError, match="this ragbus reads no https:// content"):
        chunk_event(event, chunker, no_store, content.build(FetchSettings()))
