"""One Kafka client configuration for every stage.

`RAGBUS_KAFKA_CLIENT_CONFIG` holds librdkafka settings (JSON), which the confluent-kafka stages take
as they are. The faust stages (chunker, embedder) run on aiokafka, which names the same things
differently; `faust_options` maps the security settings onto faust's credentials so that every stage
joins a secured cluster with the one configuration:

- `security.protocol` PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL -> `SSLCredentials`, or
  `SASLCredentials` / `GSSAPICredentials` (SASL_SSL when they carry an SSL context);
- `sasl.mechanism` (or `sasl.mechanisms`) PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 with `sasl.username`
  and `sasl.password` -> `SASLCredentials(mechanism, username, password)`;
- `sasl.mechanism` GSSAPI, `sasl.kerberos.service.name` -> `GSSAPICredentials` (the ticket comes from
  the system's Kerberos, as for librdkafka without a keytab);
- `ssl.ca.location` (file, directory or `probe`), `ssl.ca.pem` -> the SSL context's trusted CAs;
- `ssl.certificate.location`/`.pem`, `ssl.key.location`/`.pem`, `ssl.key.password` -> the context's
  client certificate chain;
- `ssl.endpoint.identification.algorithm` (`https` by default, or `none`) -> `check_hostname`;
  `enable.ssl.certificate.verification` (`true` by default) -> `verify_mode`;
- `client.id` -> `broker_client_id`.

A security setting aiokafka cannot honour (OAUTHBEARER, keytabs, CRLs, engines, ...) is a
ConfigurationError at start-up naming it, never a silent downgrade; other librdkafka settings
(tuning) apply to the confluent-kafka stages only, and the faust stages say so in one log line.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from faust.auth import GSSAPICredentials, SASLCredentials, SSLCredentials

from kernel.errors import ConfigurationError

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
PASSWORD_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
MAPPED = frozenset({
    "security.protocol", "sasl.mechanism", "sasl.mechanisms", "sasl.username", "sasl.password",
    "sasl.kerberos.service.name", "ssl.ca.location", "ssl.ca.pem", "ssl.certificate.location",
    "ssl.certificate.pem", "ssl.key.location", "ssl.key.pem", "ssl.key.password",
    "ssl.endpoint.identification.algorithm", "enable.ssl.certificate.verification", "client.id",
})
_SETTING = "RAGBUS_KAFKA_CLIENT_CONFIG"


def is_security_key(key: str) -> bool:
    return key.startswith(("security.", "sasl.", "ssl.", "ssl_")) or key == "enable.ssl.certificate.verification"


def faust_options(config: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """faust App settings for the librdkafka `config`, and the (non-security) keys that do not apply."""
    unsupported = sorted(k for k in config if is_security_key(k) and k not in MAPPED)
    if unsupported:
        raise ConfigurationError(f"{_SETTING} sets {', '.join(unsupported)}, which the faust stages (chunker, "
                                 "embedder) cannot honour on aiokafka; see docs/operations.md for what maps")
    options: dict[str, Any] = {}
    credentials = _credentials(config)
    if credentials is not None:
        options["broker_credentials"] = credentials
    if "client.id" in config:
        options["broker_client_id"] = config["client.id"]
    ignored = sorted(k for k in config if k not in MAPPED)
    return options, ignored


def _credentials(config: Mapping[str, str]) -> SSLCredentials | GSSAPICredentials | SASLCredentials | None:
    protocol = config.get("security.protocol", "PLAINTEXT").upper()
    if protocol not in PROTOCOLS:
        raise ConfigurationError(f"{_SETTING}: security.protocol={config['security.protocol']!r} is not one of "
                                 f"{', '.join(PROTOCOLS)}")
    uses_ssl, uses_sasl = protocol in ("SSL", "SASL_SSL"), protocol.startswith("SASL")
    stray = [k for k in config if (k.startswith("sasl.") and not uses_sasl)
             or (k.startswith("ssl.") and not uses_ssl)]
    if stray:
        raise ConfigurationError(f"{_SETTING}: {', '.join(sorted(stray))} has no effect with security.protocol="
                                 f"{protocol}: set the protocol that uses it (SASL_SSL, SASL_PLAINTEXT or SSL)")
    context = ssl_context(config) if uses_ssl else None
    if not uses_sasl:
        return SSLCredentials(context) if context is not None else None
    mechanism = (config.get("sasl.mechanism") or config.get("sasl.mechanisms") or "GSSAPI").upper()
    if mechanism == "GSSAPI":
        return GSSAPICredentials(kerberos_service_name=config.get("sasl.kerberos.service.name", "kafka"),
                                 ssl_context=context)
    if mechanism not in PASSWORD_MECHANISMS:
        raise ConfigurationError(f"{_SETTING}: sasl.mechanism={mechanism} is not supported by the faust stages "
                                 f"(they support {', '.join(PASSWORD_MECHANISMS)} and GSSAPI)")
    missing = [k for k in ("sasl.username", "sasl.password") if not config.get(k)]
    if missing:
        raise ConfigurationError(f"{_SETTING}: sasl.mechanism={mechanism} needs {' and '.join(missing)}")
    return SASLCredentials(username=config["sasl.username"], password=config["sasl.password"],
                           ssl_context=context, mechanism=mechanism)


def ssl_context(config: Mapping[str, str]) -> ssl.SSLContext:
    """The SSL context librdkafka would build from the same settings."""
    ca = config.get("ssl.ca.location")
    try:
        if ca is None or ca == "probe":
            context = ssl.create_default_context(cadata=config.get("ssl.ca.pem"))
        elif Path(ca).is_dir():
            context = ssl.create_default_context(capath=ca, cadata=config.get("ssl.ca.pem"))
        else:
            context = ssl.create_default_context(cafile=ca, cadata=config.get("ssl.ca.pem"))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"{_SETTING}: cannot load the CA certificates (ssl.ca.location / ssl.ca.pem): "
                                 f"{exc}") from exc
    _client_certificate(context, config)
    if config.get("ssl.endpoint.identification.algorithm", "https").lower() == "none":
        context.check_hostname = False
    if config.get("enable.ssl.certificate.verification", "true").lower() == "false":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _client_certificate(context: ssl.SSLContext, config: Mapping[str, str]) -> None:
    if not any(k in config for k in ("ssl.certificate.location", "ssl.certificate.pem")):
        if any(k in config for k in ("ssl.key.location", "ssl.key.pem")):
            raise ConfigurationError(f"{_SETTING}: a client key needs its certificate (ssl.certificate.location "
                                     "or ssl.certificate.pem)")
        return
    with _as_file(config, "ssl.certificate") as cert, _as_file(config, "ssl.key") as key:
        assert cert is not None  # ssl.certificate.location or .pem is set (checked above)
        try:
            context.load_cert_chain(cert, keyfile=key, password=config.get("ssl.key.password"))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"{_SETTING}: cannot load the client certificate and key "
                                     f"(ssl.certificate.*, ssl.key.*): {exc}") from exc


@contextmanager
def _as_file(config: Mapping[str, str], prefix: str) -> Iterator[str | None]:
    """`<prefix>.location` as is, or `<prefix>.pem` in a private temporary file (ssl loads files only)."""
    if f"{prefix}.location" in config:
        yield config[f"{prefix}.location"]
        return
    pem = config.get(f"{prefix}.pem")
    if pem is None:
        yield None
        return
    fd, path = tempfile.mkstemp(suffix=".pem")
    try:
        with os.fdopen(fd, "w") as fh:  # mkstemp: readable by this user only
            fh.write(pem)
        yield path
    finally:
        os.unlink(path)
