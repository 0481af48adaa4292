"""Where a content_url may point: the operator's allow-list, and the addresses no fetch may reach.

A publisher chooses the URL; the operator chooses what ragbus may read. Nothing is readable until
configured (RAGBUS_FETCH_ALLOWED_URLS, RAGBUS_FETCH_FILE_ROOTS). An allow-list entry is a URL prefix:

- `https://docs.example.com` - that host on port 443, any path;
- `https://*.example.com` - any subdomain of example.com (not example.com itself), port 443;
- `https://files.example.com:8443/public/` - that host and port, paths under /public/ only;
- `s3://bucket` or `s3://bucket/prefix/` - objects of that bucket (under that prefix).

Host names are trusted no further than their DNS: whatever name is allowed, an https fetch connects
only to the address it checked, and never to link-local (cloud metadata), multicast, unspecified or
reserved addresses; private and loopback addresses only when RAGBUS_FETCH_ALLOW_PRIVATE_ADDRESSES is
set. Every redirect is checked again, the same way.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote, urlsplit

from kernel.errors import ConfigurationError, FetchError

DEFAULT_PORTS = {"https": 443}


def redact(url: str) -> str:
    """The URL as it may appear in a reason, a log or a status: without its query string or fragment,
    which may carry a signature (pre-signed URLs) or a token."""
    parts = urlsplit(url)
    tail = "?..." if parts.query else ""
    return f"{parts.scheme}://{parts.netloc}{parts.path}{tail}"


def _clean_path(path: str) -> str:
    """The decoded path, refusing dot segments (`..` could climb out of an allowed prefix once decoded)."""
    decoded = unquote(path) or "/"
    if any(seg in (".", "..") for seg in decoded.split("/")) or "\\" in decoded:
        raise ValueError("dot segments")
    return decoded


@dataclass(frozen=True)
class Rule:
    """One allow-list entry."""

    scheme: str
    host: str  # lower case; a leading "*." matches subdomains
    port: int | None
    path: str  # "/" or a prefix ending in "/"

    @classmethod
    def parse(cls, entry: str) -> Rule:
        parts = urlsplit(entry.strip())
        scheme = parts.scheme.lower()
        if scheme not in ("https", "s3") or not parts.hostname:
            raise ConfigurationError(
                f"RAGBUS_FETCH_ALLOWED_URLS entry {entry!r} is not an https://HOST[:PORT][/PATH/] or "
                "s3://BUCKET[/PREFIX/] prefix (file:// sources are RAGBUS_FETCH_FILE_ROOTS)")
        if parts.query or parts.fragment or parts.username:
            raise ConfigurationError(f"RAGBUS_FETCH_ALLOWED_URLS entry {entry!r} must be a plain prefix")
        try:
            path = _clean_path(parts.path)
            port = parts.port
        except ValueError as exc:
            raise ConfigurationError(f"RAGBUS_FETCH_ALLOWED_URLS entry {entry!r}: {exc}") from exc
        path = path if path.endswith("/") else path + "/"
        return cls(scheme, parts.hostname.lower(), port or DEFAULT_PORTS.get(scheme), path)

    def matches(self, url: SplitResult, path: str) -> bool:
        host = (url.hostname or "").lower()
        if url.scheme.lower() != self.scheme:
            return False
        if self.host.startswith("*."):
            if not host.endswith(self.host[1:]):
                return False
        elif host != self.host:
            return False
        if (url.port or DEFAULT_PORTS.get(self.scheme)) != self.port:
            return False
        return self.path == "/" or (path if path.endswith("/") else path + "/").startswith(self.path)


class AllowList:
    """The operator's allow-list for one scheme."""

    def __init__(self, entries: list[str], scheme: str) -> None:
        self.scheme = scheme
        self.rules = [r for r in (Rule.parse(e) for e in entries) if r.scheme == scheme]

    def __bool__(self) -> bool:
        return bool(self.rules)

    def check(self, url: str) -> SplitResult:
        """The parsed URL when it is allowed; else FetchError saying so."""
        parts = urlsplit(url)
        try:
            path = _clean_path(parts.path)
        except ValueError:
            raise FetchError(f"content_url {redact(url)} has '.' or '..' path segments: send the plain path") from None
        if parts.scheme.lower() != self.scheme:
            raise FetchError(f"content_url {redact(url)} is not an {self.scheme}:// URL")
        if not any(rule.matches(parts, path) for rule in self.rules):
            raise FetchError(f"content_url {redact(url)} is not in this ragbus's allow-list "
                             "(RAGBUS_FETCH_ALLOWED_URLS): publish it under an allowed prefix, or ask the operator "
                             "to allow it")
        return parts


def refused_address(address: str, allow_private: bool) -> str | None:
    """Why a fetch may not connect to `address`, or None when it may."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_link_local:
        return "a link-local address (such as a cloud metadata service)"
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        return "not a unicast host address"
    if not ip.is_global and not allow_private:
        kind = "a loopback" if ip.is_loopback else "a private or internal"
        return f"{kind} address (set RAGBUS_FETCH_ALLOW_PRIVATE_ADDRESSES=true to allow internal sources)"
    return None


def resolve(host: str, port: int, allow_private: bool) -> list[str]:
    """The addresses to connect to for `host`, in the resolver's order: every address its name resolves
    to must be allowed, so a name that also points inside cannot be used to get there."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchError(f"cannot resolve host {host!r}: {exc}") from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for address in addresses:
        why = refused_address(address, allow_private)
        if why is not None:
            raise FetchError(f"host {host!r} resolves to {address}, {why}: ragbus does not fetch from there")
    if not addresses:
        raise FetchError(f"cannot resolve host {host!r}: no addresses")
    return addresses


def s3_location(parts: SplitResult) -> tuple[str, str]:
    """(bucket, key) of an s3:// URL."""
    return parts.hostname or "", unquote(parts.path)[1:]
