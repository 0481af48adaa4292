"""Adapters that read a document's content by reference (the ContentFetcher port): https:// (httpcore),
s3:// (boto3) and file:// (local directories), behind one allow-list (allow.py).

`build(settings)` gives the fetcher the chunker uses: it routes each URL to the adapter of its scheme,
and a scheme the operator did not enable is refused with a reason that says how to enable it.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from infra.settings import FetchSettings
from kernel.errors import ConfigurationError, FetchError
from kernel.ports import ContentFetcher, FetchedContent

from .allow import AllowList, redact

_ENABLE = {"https": "allow its host in RAGBUS_FETCH_ALLOWED_URLS", "s3": "allow its bucket in "
           "RAGBUS_FETCH_ALLOWED_URLS", "file": "name its directory in RAGBUS_FETCH_FILE_ROOTS"}


class ByScheme:
    """Routes a URL to the fetcher of its scheme."""

    def __init__(self, fetchers: dict[str, ContentFetcher]) -> None:
        self.fetchers = fetchers

    def fetch(self, url: str) -> FetchedContent:
        scheme = urlsplit(url).scheme.lower()
        fetcher = self.fetchers.get(scheme)
        if fetcher is None:
            raise FetchError(f"content_url {redact(url)}: this ragbus reads no {scheme}:// content; its operator "
                             f"can {_ENABLE.get(scheme, 'not enable it')} (docs/configuration.md)")
        return fetcher.fetch(url)


def build(settings: FetchSettings) -> ByScheme:
    """The fetchers the settings enable (none by default)."""
    fetchers: dict[str, ContentFetcher] = {}
    https = AllowList(settings.allowed_urls, "https")
    if https:
        from .https import HttpsFetcher

        fetchers["https"] = HttpsFetcher(settings, https)
    s3 = AllowList(settings.allowed_urls, "s3")
    if s3:
        try:
            from .s3 import S3Fetcher
        except ImportError as exc:
            raise ConfigurationError("s3:// sources need boto3: install ragbus[s3]") from exc
        fetchers["s3"] = S3Fetcher(settings, s3)
    if settings.file_roots:
        from .files import FileFetcher

        fetchers["file"] = FileFetcher(settings)
    return ByScheme(fetchers)
