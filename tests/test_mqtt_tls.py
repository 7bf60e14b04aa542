"""The publisher over TLS with username and password, against a real mosquitto."""

from __future__ import annotations

import datetime as dt
import getpass
import ipaddress
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from device.config import MqttSection, TlsSection
from device.errors import ConfigError
from device.mqtt.publisher import MqttPublisher
from device.mqtt.subscriber import EventSubscriber
from device.mqtt.topics import Topics
from tests.conftest import free_port, wait_for_port


@dataclass(frozen=True)
class TlsBroker:
    port: int
    ca_file: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    ca: bool,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[TlsBroker]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate("edgewatch test CA", ca_key, None, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _certificate("localhost", server_key, ca_cert.subject, ca_key, ca=False)
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "server.crt").write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(tmp_path / "server.key", server_key)
    passwords = tmp_path / "passwd"
    subprocess.run(
        [shutil.which("mosquitto_passwd") or "mosquitto_passwd", "-b", "-c", str(passwords),
         "pi1", "correct horse"],
        check=True,
    )  # fmt: skip
    port = free_port()
    config = tmp_path / "mosquitto.conf"
    config.write_text(
        f"user {getpass.getuser()}\n"
        f"listener {port} 127.0.0.1\n"
        f"cafile {ca_file}\ncertfile {tmp_path / 'server.crt'}\nkeyfile {tmp_path / 'server.key'}\n"
        f"allow_anonymous false\npassword_file {passwords}\n"
    )
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    process = subprocess.Popen([binary, "-c", str(config)], stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port)
        yield TlsBroker(port, ca_file)
    finally:
        process.terminate()
        process.wait(5)


def _section(broker: TlsBroker, password: str) -> MqttSection:
    return MqttSection(
        host="localhost",
        port=broker.port,
        username="pi1",
        password=password,
        password_env=None,
        tls=TlsSection(ca_file=broker.ca_file),
        reconnect_min_s=0.2,
        reconnect_max_s=1.0,
    )


def test_publisher_connects_with_tls_and_password(tls_broker: TlsBroker) -> None:
    section = _section(tls_broker, "correct horse")
    publisher = MqttPublisher(section, Topics("edgewatch", "pi1"))
    publisher.start()
    try:
        assert publisher.wait_connected(10)
        with EventSubscriber("localhost", tls_broker.port, config=section) as subscriber:
            assert subscriber.wait_subscribed(10)
            message = subscriber.get(timeout=5)
            assert message is not None
            assert message.topic == "edgewatch/pi1/availability" and message.payload == "online"
    finally:
        publisher.stop()


def test_wrong_password_keeps_retrying_without_crashing(tls_broker: TlsBroker) -> None:
    publisher = MqttPublisher(_section(tls_broker, "wrong"), Topics("edgewatch", "pi1"))
    publisher.start()
    try:
        assert not publisher.wait_connected(2)
        assert publisher.stats.connects == 0
    finally:
        publisher.stop()


def test_missing_ca_file_is_a_config_error(tls_broker: TlsBroker, tmp_path: Path) -> None:
    section = _section(tls_broker, "x").model_copy(
        update={"tls": TlsSection(ca_file=tmp_path / "nope.crt")}
    )
    with pytest.raises(ConfigError, match=r"mqtt\.tls\.ca_file"):
        MqttPublisher(section, Topics("edgewatch", "pi1"))
