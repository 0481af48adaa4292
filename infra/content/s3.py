"""content_url s3:// through boto3: allowed buckets and prefixes only, bounded in size and time.

Credentials, as for any boto3 client, come from the environment, the shared config files or the
instance role; RAGBUS_FETCH_S3_ENDPOINT_URL points at an S3-compatible store (MinIO, Ceph, R2). Every
failure (no such key, access denied, no credentials, unreachable) is this event's: it is dead-lettered
with the reason and can be replayed once fixed.
"""

from __future__ import annotations

import time
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from infra.settings import FetchSettings
from kernel.errors import FetchError
from kernel.ports import FetchedContent

from .allow import AllowList, redact, s3_location
from .https import media_type

_MISSING = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_DENIED = {"AccessDenied", "403", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch"}


class S3Fetcher:
    """ContentFetcher for s3:// URLs on the allow-list."""

    def __init__(self, settings: FetchSettings, allow: AllowList, client: Any = None) -> None:
        self._settings = settings
        self._allow = allow
        self._client = client or boto3.client(
            "s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region,
            config=Config(connect_timeout=settings.connect_timeout_s, read_timeout=settings.timeout_s,
                          retries={"max_attempts": settings.retries + 1, "mode": "standard"}))

    def fetch(self, url: str) -> FetchedContent:
        bucket, key = s3_location(self._allow.check(url))
        deadline = time.monotonic() + self._settings.timeout_s
        limit = self._settings.max_bytes
        try:
            response = self._client.get_object(Bucket=bucket, Key=key)
            body = response["Body"]
            try:
                if int(response.get("ContentLength", 0)) > limit:
                    raise FetchError(f"content_url {redact(url)} is {response['ContentLength']} bytes, over the "
                                     f"{limit}-byte limit (RAGBUS_FETCH_MAX_BYTES)")
                chunks: list[bytes] = []
                size = 0
                for chunk in body.iter_chunks(64 * 1024):
                    size += len(chunk)
                    if size > limit:
                        raise FetchError(f"content_url {redact(url)} is over the {limit}-byte limit "
                                         "(RAGBUS_FETCH_MAX_BYTES)")
                    if time.monotonic() > deadline:
                        raise FetchError(f"content_url {redact(url)} was not read within the time limit "
                                         f"({self._settings.timeout_s:g} s, RAGBUS_FETCH_TIMEOUT_S)")
                    chunks.append(chunk)
            finally:
                body.close()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING:
                raise FetchError(f"content_url {redact(url)}: no such object ({code}): upload it (or fix the URL), "
                                 "then replay the dead letter") from exc
            if code in _DENIED:
                raise FetchError(f"content_url {redact(url)}: ragbus may not read it ({code}): grant its "
                                 "credentials s3:GetObject on the object") from exc
            raise FetchError(f"content_url {redact(url)} could not be read: {code or exc}"[:500]) from exc
        except BotoCoreError as exc:  # no credentials, endpoint unreachable, timeouts
            raise FetchError(f"content_url {redact(url)} could not be read: {type(exc).__name__}: {exc}"[:500]) from exc
        kind, charset = media_type(str(response.get("ContentType", "")))
        return FetchedContent(b"".join(chunks), kind, charset)
