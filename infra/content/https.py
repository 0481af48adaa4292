"""content_url https:// through httpcore: allowed hosts only, checked addresses only, bounded size and time.

The connection goes to the address the allow-list guard checked (a custom network backend resolves
the name, refuses internal addresses, and connects to that address), while TLS still verifies the
certificate for the host name. Redirects are followed by hand, at most RAGBUS_FETCH_MAX_REDIRECTS, each
checked like the first URL; a redirect to http:// or to a place not allowed ends the fetch. Responses
are read as they stream in, and the read stops as soon as the size or the time limit is passed.
Proxies from the environment are not used (they would hide the address from the guard).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urljoin

import certifi
import httpcore

from infra.settings import FetchSettings
from kernel.errors import FetchError
from kernel.ports import FetchedContent

from .allow import AllowList, redact, resolve

_REDIRECTS = {301, 302, 303, 307, 308}
#: Statuses worth another try within the time limit (the source is briefly unavailable).
_TRANSIENT = {408, 429, 500, 502, 503, 504}
_USER_AGENT = b"ragbus content fetcher (+docs/publishing.md)"


class _GuardedBackend(httpcore.SyncBackend):
    """Connects only to addresses the guard allowed: the name is resolved and checked here, once, and the
    socket is opened to that very address (no second lookup an attacker's DNS could answer differently)."""

    def __init__(self, allow_private: bool) -> None:
        self._allow_private = allow_private

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        addresses = resolve(host, port, self._allow_private)
        for address in addresses[:-1]:  # like socket.create_connection: the first address that answers
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError:
                continue
        return super().connect_tcp(addresses[-1], port, timeout, local_address, socket_options)


def media_type(value: str) -> tuple[str, str]:
    """(media type, charset) of a Content-Type header value, lower case."""
    head, *params = value.split(";")
    charset = ""
    for param in params:
        name, _, val = param.partition("=")
        if name.strip().lower() == "charset":
            charset = val.strip().strip('"').lower()
    return head.strip().lower(), charset


class HttpsFetcher:
    """ContentFetcher for https:// URLs on the allow-list."""

    def __init__(self, settings: FetchSettings, allow: AllowList) -> None:
        self._settings = settings
        self._allow = allow
        context = ssl.create_default_context(cafile=str(settings.ca_bundle) if settings.ca_bundle else certifi.where())
        self._pool = httpcore.ConnectionPool(ssl_context=context, max_connections=8, retries=0,
                                             network_backend=_GuardedBackend(settings.allow_private_addresses))

    def fetch(self, url: str) -> FetchedContent:
        deadline = time.monotonic() + self._settings.timeout_s
        attempt = 0
        while True:
            try:
                return self._follow(url, deadline)
            except _Transient as exc:
                attempt += 1
                wait = min(0.5 * 2 ** attempt, max(0.0, deadline - time.monotonic()))
                if attempt > self._settings.retries or wait <= 0 or time.monotonic() + wait >= deadline:
                    raise FetchError(str(exc)) from exc
                time.sleep(wait)

    def _follow(self, url: str, deadline: float) -> FetchedContent:
        current = url
        for _ in range(self._settings.max_redirects + 1):
            self._allow.check(current)
            location = self._get(current, url, deadline)
            if isinstance(location, FetchedContent):
                return location
            target = urljoin(current, location)
            if not target.lower().startswith("https://"):
                raise FetchError(f"content_url {redact(url)} redirected to {redact(target)}: ragbus follows "
                                 "redirects to https:// only")
            try:
                self._allow.check(target)
            except FetchError as exc:
                raise FetchError(f"content_url {redact(url)} redirected to {redact(target)}, which is not "
                                 "allowed: " + str(exc).split(": ", 1)[-1]) from None
            current = target
        raise FetchError(f"content_url {redact(url)} redirected more than {self._settings.max_redirects} times "
                         "(RAGBUS_FETCH_MAX_REDIRECTS)")

    def _get(self, url: str, origin: str, deadline: float) -> FetchedContent | str:
        """The content, or the Location of a redirect."""
        left = max(0.1, deadline - time.monotonic())
        timeouts = {"connect": min(self._settings.connect_timeout_s, left), "read": left, "write": left,
                    "pool": left}
        headers = [(b"User-Agent", _USER_AGENT), (b"Accept", b"*/*"), (b"Accept-Encoding", b"identity")]
        where = redact(origin) if url == origin else f"{redact(origin)} (via {redact(url)})"
        try:
            with self._pool.stream("GET", url, headers=headers, extensions={"timeout": timeouts}) as response:
                fields = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in response.headers}
                status = response.status
                if status in _REDIRECTS and "location" in fields:
                    return fields["location"]
                if status in _TRANSIENT:
                    raise _Transient(f"content_url {where} answered {status}: the source is unavailable; replay "
                                     "the dead letter when it is back")
                if status != 200:
                    raise FetchError(f"content_url {where} answered {status}{_advice(status)}")
                if fields.get("content-encoding", "identity").lower() not in ("identity", ""):
                    raise FetchError(f"content_url {where} was sent with Content-Encoding "
                                     f"{fields['content-encoding']}; ragbus asks for and reads identity only")
                data = self._read(response, fields, where, deadline)
        except httpcore.TimeoutException as exc:
            raise _Transient(f"content_url {where} did not answer within the time limit "
                             f"({self._settings.timeout_s:g} s, RAGBUS_FETCH_TIMEOUT_S)") from exc
        except httpcore.ConnectError as exc:
            cause = exc.args[0] if exc.args else exc.__cause__  # httpcore wraps the original as its argument
            if isinstance(cause, ssl.SSLError):  # another attempt would not trust it either
                raise FetchError(f"content_url {where}: TLS failed: {cause}; ragbus trusts certifi's CAs "
                                 "or RAGBUS_FETCH_CA_BUNDLE"[:500]) from exc
            raise _Transient(f"content_url {where} could not be reached: {exc}"[:500]) from exc
        except (httpcore.NetworkError, httpcore.RemoteProtocolError) as exc:
            raise _Transient(f"content_url {where} could not be read: {type(exc).__name__}: {exc}"[:500]) from exc
        except (httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
            raise FetchError(f"content_url {where} could not be read: {type(exc).__name__}: {exc}"[:500]) from exc
        kind, charset = media_type(fields.get("content-type", ""))
        return FetchedContent(data, kind, charset)

    def _read(self, response: httpcore.Response, fields: dict[str, str], where: str, deadline: float) -> bytes:
        limit = self._settings.max_bytes
        declared = fields.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise FetchError(f"content_url {where} is {int(declared)} bytes, over the {limit}-byte limit "
                             "(RAGBUS_FETCH_MAX_BYTES)")
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_stream():
            size += len(chunk)
            if size > limit:
                raise FetchError(f"content_url {where} is over the {limit}-byte limit (RAGBUS_FETCH_MAX_BYTES)")
            if time.monotonic() > deadline:
                raise _Transient(f"content_url {where} was not read within the time limit "
                                 f"({self._settings.timeout_s:g} s, RAGBUS_FETCH_TIMEOUT_S)")
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self._pool.close()


class _Transient(Exception):
    """A failure another attempt may not have (within the time limit)."""


def _advice(status: int) -> str:
    if status in (404, 410):
        return " Not Found: publish the content there (or fix the URL), then replay the dead letter"
    if status in (401, 403):
        return ": ragbus is not allowed to read it; make it readable without credentials, or use s3://"
    return ": expected 200 with the content"
