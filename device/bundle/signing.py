"""Ed25519 keys for bundles: the device only ever verifies.

Keys are stored as PEM files (private: PKCS#8, unencrypted, mode 0600; public:
SubjectPublicKeyInfo) so that openssl and other tools can read them too.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from device.errors import ConfigError, SignatureInvalidError


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read the verification key the device trusts; any other key type is refused."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read public key {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ConfigError(
            f"{path} is not a PEM public key; create one with `edgewatch keys generate DIR`"
        ) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, but bundles use Ed25519 keys")
    return key


def verify_manifest(public_key: Ed25519PublicKey, manifest_bytes: bytes, signature: bytes) -> None:
    """Raise SignatureInvalidError unless ``signature`` signs exactly ``manifest_bytes``."""
    if len(signature) != 64:
        raise SignatureInvalidError(
            f"manifest.sig is {len(signature)} bytes; an Ed25519 signature is 64 bytes"
        )
    try:
        public_key.verify(signature, manifest_bytes)
    except InvalidSignature as exc:
        raise SignatureInvalidError(
            "manifest.sig does not match manifest.json under the configured public key: "
            "the bundle was altered or signed with another key"
        ) from exc
