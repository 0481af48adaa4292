"""https:// sources: a publisher cannot make ragbus read what its operator did not allow, through a
redirect, a host name that points inside, or a slow or endless answer. Loopback TLS server, no network."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra import content
from infra.content.allow import AllowList, Rule, refused_address
from infra.settings import FetchSettings
from kernel.errors import ConfigurationError, FetchError
from tests.https_server import HttpsServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[HttpsServer]:
    with HttpsServer(tmp_path) as s:
        yield s


def fetcher(server: HttpsServer, *allowed: str, **kw: Any) -> content.ByScheme:
    base: dict[str, Any] = {"allow_private_addresses": True, "ca_bundle": server.ca_file, "timeout_s": 5,
                            "retries": 0}
    return content.build(FetchSettings(allowed_urls=list(allowed) or [server.url("/")], **(base | kw)))


def test_a_redirect_within_the_allow_list_is_followed(server: HttpsServer) -> None:
    server.route("/docs/new.md", b"# moved", content_type="text/markdown")
    url = server.route("/docs/old.md", status=301, headers={"Location": "/docs/new.md"})
    assert fetcher(server, server.url("/docs/")).fetch(url).data == b"# moved"


def test_a_redirect_out_of_the_allow_list_is_refused(server: HttpsServer) -> None:
    server.route("/internal/secrets", b"secret")
    url = server.route("/docs/a.md", status=302, headers={"Location": "/internal/secrets"})
    with pytest.raises(FetchError, match=r"redirected to https://127\.0\.0\.1:\d+/internal/secrets, which is not "
                                         r"allowed"):
        fetcher(server, server.url("/docs/")).fetch(url)
    assert server.hits["/internal/secrets"] == 0


def test_a_redirect_to_plain_http_or_in_circles_is_refused(server: HttpsServer) -> None:
    url = server.route("/down", status=302, headers={"Location": "http://127.0.0.1:9/x"})
    with pytest.raises(FetchError, match="follows redirects to https:// only"):
        fetcher(server).fetch(url)
    loop = server.route("/loop", status=307, headers={"Location": "/loop"})
    with pytest.raises(FetchError, match=r"redirected more than 3 times \(RAGBUS_FETCH_MAX_REDIRECTS\)"):
        fetcher(server).fetch(loop)


def test_an_allowed_name_that_points_inside_is_refused_unless_internal_sources_are_allowed(server: HttpsServer) -> None:
    url = server.route("/a.md", b"hello", content_type="text/plain").replace("127.0.0.1", "localhost")
    closed = fetcher(server, f"https://localhost:{server.port}", allow_private_addresses=False)
    with pytest.raises(FetchError, match=r"host 'localhost' resolves to (127\.0\.0\.1|::1), a loopback address "
                                         r"\(set RAGBUS_FETCH_ALLOW_PRIVATE_ADDRESSES=true"):
        closed.fetch(url)
    assert server.hits["/a.md"] == 0
    assert fetcher(server, f"https://localhost:{server.port}").fetch(url).data == b"hello"


@pytest.mark.parametrize(("address", "private_ok", "refused"), [
    ("169.254.169.254", True, "link-local"),  # cloud metadata: never, whatever the settings
    ("fe80::1", True, "link-local"),
    ("::ffff:169.254.169.254", True, "link-local"),
    ("::ffff:127.0.0.1", False, "loopback"),
    ("10.1.2.3", False, "private or internal"),
    ("100.64.0.1", False, "private or internal"),  # carrier-grade NAT
    ("fd00::1", False, "private or internal"),
    ("0.0.0.0", True, "not a unicast"),
    ("224.0.0.1", True, "not a unicast"),
    ("10.1.2.3", True, None),
    ("93.184.215.14", False, None),
    ("2606:4700::1111", False, None),
])
def test_addresses_a_fetch_may_reach(address: str, private_ok: bool, refused: str | None) -> None:
    why = refused_address(address, private_ok)
    assert (why is None) if refused is None else (why is not None and refused in why)


@pytest.mark.parametrize(("entry", "url", "allowed"), [
    ("https://docs.example.com", "https://docs.example.com/a/b.md", True),
    ("https://docs.example.com", "https://DOCS.example.com:443/a", True),
    ("https://docs.example.com", "https://docs.example.com:8443/a", False),
    ("https://docs.example.com", "https://docs.example.com.evil.net/a", False),
    ("https://*.example.com", "https://a.b.example.com/x", True),
    ("https://*.example.com", "https://example.com/x", False),
    ("https://*.example.com", "https://evilexample.com/x", False),
    ("https://docs.example.com/public/", "https://docs.example.com/public/a.md", True),
    ("https://docs.example.com/public", "https://docs.example.com/public-not/a.md", False),
    ("https://docs.example.com/public/", "https://docs.example.com/public/../private/a.md", False),
    ("https://docs.example.com/public/", "https://docs.example.com/public/%2e%2e/private/a.md", False),
    ("s3://bucket/prefix/", "s3://bucket/prefix/a.pdf", True),
    ("s3://bucket/prefix/", "s3://bucket/other/a.pdf", False),
    ("s3://bucket", "s3://bucket2/a.pdf", False),
])
def test_allow_list_entries(entry: str, url: str, allowed: bool) -> None:
    scheme = entry.split(":", 1)[0]
    allow = AllowList([entry], scheme)
    if allowed:
        allow.check(url)
    else:
        with pytest.raises(FetchError):
            allow.check(url)


@pytest.mark.parametrize("entry", ["http://docs.example.com", "docs.example.com", "https://", "file:///tmp",
                                   "https://docs.example.com/?q=1", "https://u:p@docs.example.com"])
def test_a_wrong_allow_list_entry_is_a_configuration_error(entry: str) -> None:
    with pytest.raises(ConfigurationError, match="RAGBUS_FETCH_ALLOWED_URLS"):
        Rule.parse(entry)


def test_a_slow_source_is_cut_off_at_the_time_limit(server: HttpsServer) -> None:
    url = server.route("/slow.txt", b"x" * 50 * 1024, drip_s=0.2)
    started = time.monotonic()
    with pytest.raises(FetchError, match=r"within the time limit \(1 s, RAGBUS_FETCH_TIMEOUT_S\)"):
        fetcher(server, timeout_s=1).fetch(url)
    assert time.monotonic() - started < 3


def test_a_declared_length_over_the_limit_is_refused_before_reading(server: HttpsServer) -> None:
    url = server.route("/huge.bin", b"tiny", headers={"Content-Length": str(10 ** 9)})
    with pytest.raises(FetchError, match="is 1000000000 bytes, over the 1024-byte limit"):
        fetcher(server, max_bytes=1024).fetch(url)


def test_a_flaky_source_is_retried_within_the_time_limit(server: HttpsServer) -> None:
    url = server.route("/flaky.txt", b"finally", fail_first=1, first_status=503)
    assert fetcher(server, retries=1).fetch(url).data == b"finally"
    assert server.hits["/flaky.txt"] == 2
    gone = server.route("/gone.txt", b"", fail_first=9, first_status=503)
    with pytest.raises(FetchError, match="answered 503: the source is unavailable"):
        fetcher(server, retries=1).fetch(gone)


def test_compressed_answers_and_refusals_are_named(server: HttpsServer) -> None:
    url = server.route("/z.txt", b"\x1f\x8b...", headers={"Content-Encoding": "gzip"})
    with pytest.raises(FetchError, match="Content-Encoding gzip"):
        fetcher(server).fetch(url)
    denied = server.route("/denied.txt", b"", status=403)
    with pytest.raises(FetchError, match="answered 403: ragbus is not allowed to read it"):
        fetcher(server).fetch(denied)


def test_an_untrusted_certificate_is_refused_at_once(server: HttpsServer, tmp_path: Path) -> None:
    url = server.route("/a.txt", b"hello")
    untrusted = content.build(FetchSettings(allowed_urls=[server.url("/")], allow_private_addresses=True,
                                            retries=2, timeout_s=5))
    started = time.monotonic()
    with pytest.raises(FetchError, match="TLS failed"):
        untrusted.fetch(url)
    assert time.monotonic() - started < 1  # not retried: another attempt would fail the same way
