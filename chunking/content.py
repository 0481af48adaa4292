"""Fetched bytes checked against what the event declared (pure functions, no I/O).

A document by URL says what it is (`content_type`); its source may say so too (an https Content-Type,
an S3 object's ContentType). They must agree, and the bytes must be what both claim: a PDF starts with
`%PDF-`, text decodes in its charset. A generic or missing declaration (application/octet-stream, a
local file) is judged by the bytes alone. `content_sha256`, when the event pins it, must match.
"""

from __future__ import annotations

import codecs

from kernel.errors import PoisonMessageError
from kernel.ports import FetchedContent
from schemas.events import ContentType, content_hash

#: Media types a source may declare for each content_type the event may declare.
COMPATIBLE = {
    ContentType.TEXT: {"text/plain"},
    ContentType.MARKDOWN: {"text/markdown", "text/x-markdown", "text/plain"},
    ContentType.HTML: {"text/html", "application/xhtml+xml"},
    ContentType.PDF: {"application/pdf", "application/x-pdf"},
}
#: Declarations that say nothing about the content.
GENERIC = {"", "application/octet-stream", "binary/octet-stream"}


def _is_pdf(data: bytes) -> bool:
    return b"%PDF-" in data[:1024]


def accept(declared: ContentType, fetched: FetchedContent, url: str, sha256: str | None) -> str | bytes:
    """The content to chunk (bytes for a PDF, text otherwise), or PoisonMessageError saying what disagrees."""
    if sha256 is not None and content_hash(fetched.data) != sha256:
        raise PoisonMessageError(f"content_url {url} has sha256 {content_hash(fetched.data)}, but the event's "
                                 f"content_sha256 is {sha256}: the content changed since the event was published")
    source = fetched.media_type
    if source not in GENERIC and source not in COMPATIBLE[declared]:
        expected = ", ".join(sorted(COMPATIBLE[declared]))
        raise PoisonMessageError(f"content_url {url} is {source} according to its source, but the event's "
                                 f"content_type is {declared}: expected one of {expected} (set content_type to what "
                                 "the document is)")
    if declared is ContentType.PDF:
        if not _is_pdf(fetched.data):
            raise PoisonMessageError(f"content_url {url} is not a PDF (it does not start with %PDF-), but the "
                                     "event's content_type is application/pdf")
        return fetched.data
    if _is_pdf(fetched.data):
        raise PoisonMessageError(f"content_url {url} is a PDF, but the event's content_type is {declared}: "
                                 "expected application/pdf")
    charset = fetched.charset or "utf-8"
    try:
        codecs.lookup(charset)
        return fetched.data.decode(charset)
    except LookupError as exc:
        raise PoisonMessageError(f"content_url {url} declares an unknown charset {charset!r}") from exc
    except UnicodeDecodeError as exc:
        raise PoisonMessageError(f"content_url {url} is not {charset} text ({exc.reason} at byte {exc.start}); "
                                 "declare its charset in Content-Type, or send UTF-8") from exc
