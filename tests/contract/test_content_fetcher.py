"""ContentFetcher contract: every adapter (https on a loopback TLS server, S3 through moto in-process,
local files) returns exactly the bytes and what their source declared, refuses what is not allowed,
missing or too large with a reason that names the URL without its query string, and never reads more
than its limit."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra import content
from infra.settings import FetchSettings
from kernel.errors import FetchError
from kernel.ports import ContentFetcher
from tests.https_server import HttpsServer

LIMIT = 64 * 1024


@dataclass
class Backend:
    name: str
    #: Store `data` under `name` with a declared media type; returns its URL.
    put: Callable[[str, bytes, str], str]
    #: A URL of this scheme that the allow-list (or the roots) does not cover.
    outside: str
    #: A URL that is allowed but names nothing.
    missing: str
    fetcher: ContentFetcher
    declares_media_type: bool = True


@contextlib.contextmanager
def _https(tmp: Path) -> Iterator[Backend]:
    with HttpsServer(tmp) as server:
        settings = FetchSettings(allowed_urls=[f"https://127.0.0.1:{server.port}/docs/"], max_bytes=LIMIT,
                                 allow_private_addresses=True, ca_bundle=server.ca_file, timeout_s=5, retries=0)

        def put(name: str, data: bytes, media_type: str) -> str:
            return server.route(f"/docs/{name}", data, content_type=media_type)

        yield Backend("https", put, server.url("/private/x.md"), server.url("/docs/missing.md?sig=SECRET"),
                      content.build(settings))


@contextlib.contextmanager
def _s3(tmp: Path) -> Iterator[Backend]:
    import boto3
    from moto import mock_aws

    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "eu-west-1"}.items():
            mp.setenv(key, value)
        with mock_aws():
            s3 = boto3.client("s3", region_name="eu-west-1")
            for bucket in ("docs-bucket", "other-bucket"):
                s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
            settings = FetchSettings(allowed_urls=["s3://docs-bucket/public/"], max_bytes=LIMIT, s3_region="eu-west-1")

            def put(name: str, data: bytes, media_type: str) -> str:
                s3.put_object(Bucket="docs-bucket", Key=f"public/{name}", Body=data, ContentType=media_type)
                return f"s3://docs-bucket/public/{name}"

            s3.put_object(Bucket="other-bucket", Key="public/x.md", Body=b"secret")
            yield Backend("s3", put, "s3://other-bucket/public/x.md", "s3://docs-bucket/public/missing.md?sig=SECRET",
                          content.build(settings))


@contextlib.contextmanager
def _files(tmp: Path) -> Iterator[Backend]:
    root, other = tmp / "root", tmp / "other"
    root.mkdir()
    other.mkdir()
    (other / "x.md").write_text("secret")
    settings = FetchSettings(file_roots=[root], max_bytes=LIMIT)

    def put(name: str, data: bytes, media_type: str) -> str:
        (root / name).write_bytes(data)
        return (root / name).as_uri()

    yield Backend("file", put, (other / "x.md").as_uri(), (root / "missing.md").as_uri() + "?sig=SECRET",
                  content.build(settings), declares_media_type=False)


@pytest.fixture(params=["https", "s3", "file"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    factory = {"https": _https, "s3": _s3, "file": _files}[request.param]
    with factory(tmp_path) as b:
        yield b


def test_returns_the_bytes_and_the_declared_media_type(backend: Backend) -> None:
    data = "# Café\n\nÜnïcode and bytes: \x00 kept as they are.".encode()
    got = backend.fetcher.fetch(backend.put("doc.md", data, "text/markdown; charset=utf-8"))
    assert got.data == data
    assert (got.media_type, got.charset) == (("text/markdown", "utf-8") if backend.declares_media_type else ("", ""))


def test_binary_content_is_returned_untouched(backend: Backend) -> None:
    data = bytes(range(256)) * 10
    assert backend.fetcher.fetch(backend.put("blob.pdf", data, "application/pdf")).data == data


def test_content_at_the_limit_is_read_and_over_it_refused(backend: Backend) -> None:
    assert len(backend.fetcher.fetch(backend.put("edge.txt", b"x" * LIMIT, "text/plain")).data) == LIMIT
    url = backend.put("big.txt", b"x" * (5 * LIMIT), "text/plain")
    with pytest.raises(FetchError, match=r"over the 65536-byte limit \(RAGBUS_FETCH_MAX_BYTES\)"):
        backend.fetcher.fetch(url)


def test_a_place_not_allowed_is_refused(backend: Backend) -> None:
    with pytest.raises(FetchError) as caught:
        backend.fetcher.fetch(backend.outside)
    assert "RAGBUS_FETCH_" in str(caught.value) and "secret" not in str(caught.value)


def test_missing_content_is_refused_without_leaking_the_query_string(backend: Backend) -> None:
    with pytest.raises(FetchError) as caught:
        backend.fetcher.fetch(backend.missing)
    reason = str(caught.value)
    assert "missing.md" in reason and "SECRET" not in reason
    assert any(word in reason for word in ("Not Found", "no such"))


def test_a_scheme_not_enabled_says_how_to_enable_it(backend: Backend) -> None:
    other = {"https": "s3://bucket/key", "s3": "file:///etc/passwd", "file": "https://example.com/a"}[backend.name]
    with pytest.raises(FetchError, match="operator can"):
        backend.fetcher.fetch(other)
