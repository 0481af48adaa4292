"""content_url file:// under the configured roots (RAGBUS_FETCH_FILE_ROOTS), bounded in size.

The path is resolved (symlinks followed) before it is checked, so neither `..` nor a symlink can lead
out of a root. Files declare no media type: the chunker checks the bytes against the event's
content_type instead.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from infra.settings import FetchSettings
from kernel.errors import ConfigurationError, FetchError
from kernel.ports import FetchedContent

from .allow import redact


class FileFetcher:
    """ContentFetcher for file:// URLs inside the configured roots."""

    def __init__(self, settings: FetchSettings) -> None:
        self._max = settings.max_bytes
        self._roots = []
        for root in settings.file_roots:
            if not root.is_absolute() or not root.is_dir():
                raise ConfigurationError(f"RAGBUS_FETCH_FILE_ROOTS entry {root} is not an absolute path to a directory")
            self._roots.append(root.resolve())

    def fetch(self, url: str) -> FetchedContent:
        parts = urlsplit(url)
        url = redact(url)
        if parts.scheme.lower() != "file" or parts.netloc not in ("", "localhost"):
            raise FetchError(f"content_url {url} is not a local file:///path URL")
        named = Path(unquote(parts.path))
        try:
            path = named.resolve(strict=True)
        except (OSError, RuntimeError) as exc:
            raise FetchError(f"content_url {url}: no such file on this ragbus ({type(exc).__name__})") from exc
        if not any(path.is_relative_to(root) for root in self._roots):
            raise FetchError(f"content_url {url} is outside the directories ragbus may read "
                             "(RAGBUS_FETCH_FILE_ROOTS)")
        if not path.is_file():
            raise FetchError(f"content_url {url} is not a regular file")
        try:
            with path.open("rb") as fh:
                data = fh.read(self._max + 1)
        except OSError as exc:
            raise FetchError(f"content_url {url} cannot be read: {exc.strerror}") from exc
        if len(data) > self._max:
            raise FetchError(f"content_url {url} is over the {self._max}-byte limit (RAGBUS_FETCH_MAX_BYTES)")
        return FetchedContent(data)
