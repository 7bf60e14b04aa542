"""Writing .ewm bundles and signing them on the workstation.

The writer produces exactly the members the device's reader accepts, stores the
manifest as its canonical bytes (so the signature input is reproducible), and writes
through a temporary file and a rename so a half-written bundle is never visible.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device.bundle.manifest import Manifest, ModelFile
from device.bundle.reader import MANIFEST_NAME, MODEL_NAME, SIGNATURE_NAME
from device.errors import ConfigError, EdgewatchError

PRIVATE_KEY_NAME = "edgewatch-signing.key"
PUBLIC_KEY_NAME = "edgewatch-signing.pub"


def model_file_entry(model_bytes: bytes) -> ModelFile:
    return ModelFile(sha256=hashlib.sha256(model_bytes).hexdigest(), size=len(model_bytes))


def write_bundle(
    path: Path,
    manifest: Manifest,
    model_bytes: bytes,
    signing_key: Ed25519PrivateKey | None = None,
) -> Path:
    """Write a bundle atomically; the manifest's model entry must describe ``model_bytes``."""
    if manifest.model != model_file_entry(model_bytes):
        raise EdgewatchError("manifest.model does not describe the model bytes being written")
    manifest_bytes = manifest.canonical_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    # mkstemp creates 0600; a bundle is not secret and the daemon may run as another user.
    os.fchmod(fd, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                archive.writestr(MANIFEST_NAME, manifest_bytes)
                archive.writestr(MODEL_NAME, model_bytes)
                if signing_key is not None:
                    archive.writestr(SIGNATURE_NAME, signing_key.sign(manifest_bytes))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def generate_keys(directory: Path) -> tuple[Path, Path]:
    """Create a signing key pair; refuses to overwrite an existing key."""
    directory.mkdir(parents=True, exist_ok=True)
    private_path = directory / PRIVATE_KEY_NAME
    public_path = directory / PUBLIC_KEY_NAME
    for existing in (private_path, public_path):
        if existing.exists():
            raise ConfigError(
                f"{existing} already exists; move it away first (devices that trust it "
                "would refuse bundles signed with a new key)"
            )
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(public_pem)
    return private_path, public_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read signing key {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"{path} is not an unencrypted PEM private key; create one with "
            "`edgewatch keys generate DIR`"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}; bundles are signed with Ed25519")
    return key
