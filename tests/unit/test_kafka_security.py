"""RAGBUS_KAFKA_CLIENT_CONFIG (librdkafka's names) maps onto faust/aiokafka, so the faust stages join the
same secured cluster as the confluent-kafka ones; what cannot be mapped is an error, never a downgrade."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path
from typing import Any

import pytest
from faust.auth import GSSAPICredentials, SASLCredentials, SSLCredentials
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from engine.security import faust_options
from kernel.errors import ConfigurationError
from schemas.stages import PIPELINE

SCRAM = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "ragbus",
         "sasl.password": "s3cret"}


def aiokafka_kwargs(config: dict[str, str]) -> dict[str, Any]:
    """What faust's aiokafka driver passes to AIOKafkaConsumer/Producer for these settings."""
    options, _ = faust_options(config)
    return dict(credentials_to_aiokafka_auth(options.get("broker_credentials")))


def test_plaintext_needs_nothing() -> None:
    assert faust_options({}) == ({}, [])
    assert aiokafka_kwargs({"security.protocol": "plaintext"}) == {"security_protocol": "PLAINTEXT"}


def test_sasl_scram_over_tls() -> None:
    kwargs = aiokafka_kwargs(SCRAM)
    assert kwargs["security_protocol"] == "SASL_SSL" and kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_username"] == "ragbus" and kwargs["sasl_plain_password"] == "s3cret"
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "scram-sha-512"])
def test_sasl_plaintext_mechanisms(mechanism: str) -> None:
    cfg = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": mechanism, "sasl.username": "u",
           "sasl.password": "p"}
    kwargs = aiokafka_kwargs(cfg)
    assert kwargs["security_protocol"] == "SASL_PLAINTEXT" and kwargs["sasl_mechanism"] == mechanism.upper()
    assert kwargs["ssl_context"] is None


def test_gssapi_takes_the_service_name() -> None:
    options, _ = faust_options({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "GSSAPI",
                                "sasl.kerberos.service.name": "kafka-prod"})
    creds = options["broker_credentials"]
    assert isinstance(creds, GSSAPICredentials) and creds.kerberos_service_name == "kafka-prod"


def test_tls_with_a_client_certificate(tmp_path: Path) -> None:
    ca, cert, key = certificates(tmp_path)
    cfg = {"security.protocol": "SSL", "ssl.ca.location": str(ca), "ssl.certificate.location": str(cert),
           "ssl.key.location": str(key), "ssl.endpoint.identification.algorithm": "none"}
    options, _ = faust_options(cfg)
    creds = options["broker_credentials"]
    assert isinstance(creds, SSLCredentials)
    assert creds.context.check_hostname is False and creds.context.verify_mode == ssl.CERT_REQUIRED
    assert len(creds.context.get_ca_certs()) == 1
    pem = {"security.protocol": "SSL", "ssl.ca.pem": ca.read_text(), "ssl.certificate.pem": cert.read_text(),
           "ssl.key.pem": key.read_text()}  # inline PEM, as a secret mounted into the variable
    assert isinstance(faust_options(pem)[0]["broker_credentials"], SSLCredentials)
    off = faust_options({"security.protocol": "SSL", "enable.ssl.certificate.verification": "false"})
    assert off[0]["broker_credentials"].context.verify_mode == ssl.CERT_NONE


def test_tuning_keys_are_reported_and_client_id_maps() -> None:
    options, ignored = faust_options({"client.id": "ragbus-prod", "socket.keepalive.enable": "true"})
    assert options == {"broker_client_id": "ragbus-prod"} and ignored == ["socket.keepalive.enable"]


@pytest.mark.parametrize(("config", "says"), [
    ({"security.protocol": "SASL_SSL", "sasl.mechanism": "OAUTHBEARER"}, "sasl.mechanism=OAUTHBEARER"),
    ({"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "sasl.username": "u"}, "needs sasl.password"),
    ({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN", "sasl.username": "u",
      "sasl.password": "p", "sasl.kerberos.keytab": "/k"}, "sasl.kerberos.keytab"),
    ({"security.protocol": "SSL", "ssl.crl.location": "/crl.pem"}, "ssl.crl.location"),
    ({"sasl.username": "u", "sasl.password": "p"}, "has no effect with security.protocol=PLAINTEXT"),
    ({"security.protocol": "TLS"}, "is not one of"),
    ({"security.protocol": "SSL", "ssl.ca.location": "/nonexistent/ca.pem"}, "cannot load the CA"),
    ({"security.protocol": "SSL", "ssl.key.location": "/k.pem"}, "needs its certificate"),
])
def test_what_cannot_be_honoured_is_an_error_naming_it(config: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigurationError, match="RAGBUS_KAFKA_CLIENT_CONFIG") as err:
        faust_options(config)
    assert says in str(err.value)


def test_the_faust_app_of_a_stage_gets_the_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end as far as a unit test goes: the faust app built for a stage carries them."""
    import json

    from engine import faust_runner
    from engine.delivery import BatchPolicy
    from infra.ops.metrics import Metrics
    from infra.settings import Settings
    from kernel.stage import Stage

    monkeypatch.setenv("RAGBUS_KAFKA_CLIENT_CONFIG", json.dumps(
        {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-256", "sasl.username": "u",
         "sasl.password": "p"}))
    settings = Settings(data_dir=tmp_path, kafka={"bootstrap_servers": "127.0.0.1:1"})  # type: ignore[arg-type]
    stage = Stage(PIPELINE["chunker"], lambda events: [[] for _ in events])
    app = faust_runner.build_app(settings, BatchPolicy(settings, stage, Metrics()), Metrics())
    creds = app.conf.broker_credentials
    assert isinstance(creds, SASLCredentials) and creds.mechanism.value == "SCRAM-SHA-256"
    assert creds.username == "u" and creds.password == "p"


def certificates(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA and a client certificate signed by it (cryptography, no network)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def make(name: str, issuer: Any, issuer_key: Any, ca: bool) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer or subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        return builder.sign(issuer_key or key, hashes.SHA256()), key

    ca_cert, ca_key = make("ragbus-test-ca", None, None, True)
    cert, key = make("ragbus-client", ca_cert.subject, ca_key, False)
    paths = tmp / "ca.pem", tmp / "client.pem", tmp / "client.key"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths
