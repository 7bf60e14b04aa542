"""Reading a .ewm bundle safely: a bundle arrives from the network and is untrusted.

Only the three member names of the format are accepted, every size is capped before
anything is decompressed, the model's sha256 is checked against the manifest, and the
signature is checked whenever the device has a public key. Nothing in a bundle is ever
executed or unpickled.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from device.bundle.manifest import Manifest
from device.bundle.signing import verify_manifest
from device.errors import (
    BundleFormatError,
    BundleMemberError,
    BundleSizeError,
    BundleTaskError,
    ManifestError,
    ModelIntegrityError,
    SignatureMissingError,
)

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MODEL_NAME = "model.tflite"
SIGNATURE_NAME = "manifest.sig"
ALLOWED_MEMBERS = frozenset({MANIFEST_NAME, MODEL_NAME, SIGNATURE_NAME})

DEFAULT_MAX_MODEL_BYTES = 64 * 1024 * 1024
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_SIGNATURE_BYTES = 1024


@dataclass(frozen=True)
class Bundle:
    """A verified bundle, held in memory."""

    manifest: Manifest
    model_bytes: bytes
    manifest_bytes: bytes
    signed: bool

    def require_task(self, task: str) -> None:
        if self.manifest.task != task:
            raise BundleTaskError(
                f"bundle {self.manifest.model_ref} is a {self.manifest.task} model, "
                f"but this pipeline needs a {task} model"
            )


def read_bundle(
    source: Path | bytes,
    public_key: Ed25519PublicKey | None = None,
    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES,
) -> Bundle:
    """Open, check and verify a bundle from a file path or from bytes.

    With ``public_key`` set, an unsigned bundle is refused; without one a signature that
    is present is ignored (the device has nothing to check it against) and noted in the
    log.
    """
    what = str(source) if isinstance(source, Path) else "bundle"
    max_total = max_model_bytes + MAX_MANIFEST_BYTES + MAX_SIGNATURE_BYTES + 64 * 1024
    raw = _read_capped(source, max_total, what)
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
    except zipfile.BadZipFile as exc:
        raise BundleFormatError(
            f"{what} is not a zip archive; is it really a .ewm bundle?"
        ) from exc
    with archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        unexpected = sorted(set(names) - ALLOWED_MEMBERS)
        if unexpected:
            raise BundleMemberError(
                f"{what} holds unexpected members {unexpected}; a bundle may only hold "
                f"{sorted(ALLOWED_MEMBERS)}"
            )
        if len(names) != len(set(names)):
            raise BundleMemberError(f"{what} holds a member name twice")
        for required in (MANIFEST_NAME, MODEL_NAME):
            if required not in names:
                raise BundleMemberError(f"{what} has no {required}")
        caps = {
            MANIFEST_NAME: MAX_MANIFEST_BYTES,
            MODEL_NAME: max_model_bytes,
            SIGNATURE_NAME: MAX_SIGNATURE_BYTES,
        }
        members = {
            info.filename: _read_member(archive, info, caps[info.filename], what) for info in infos
        }

    manifest_bytes = members[MANIFEST_NAME]
    manifest = parse_manifest(manifest_bytes, what)
    model_bytes = members[MODEL_NAME]
    _check_model(manifest, model_bytes, what)

    signature = members.get(SIGNATURE_NAME)
    if public_key is not None:
        if signature is None:
            raise SignatureMissingError(
                f"{what} is not signed, and this device only accepts signed bundles; "
                "sign it with `edgewatch convert ... --sign-key KEY`"
            )
        verify_manifest(public_key, manifest_bytes, signature)
    elif signature is not None:
        log.info("%s is signed but no public key is configured; signature not checked", what)
    return Bundle(
        manifest=manifest,
        model_bytes=model_bytes,
        manifest_bytes=manifest_bytes,
        signed=public_key is not None,
    )


def parse_manifest(data: bytes, what: str = "bundle") -> Manifest:
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{what}: manifest.json is not valid UTF-8 JSON ({exc})") from exc
    try:
        return Manifest.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ManifestError(f"{what}: manifest.json is invalid: {problems}") from exc


def _read_capped(source: Path | bytes, cap: int, what: str) -> bytes:
    if isinstance(source, bytes):
        data = source
    else:
        try:
            size = source.stat().st_size
            if size > cap:
                raise BundleSizeError(f"{what} is {size} bytes; the limit is {cap} bytes")
            data = source.read_bytes()
        except FileNotFoundError as exc:
            raise BundleFormatError(f"bundle {what} does not exist") from exc
        except IsADirectoryError as exc:
            raise BundleFormatError(f"{what} is a directory, not a .ewm bundle") from exc
    if len(data) > cap:
        raise BundleSizeError(f"{what} is {len(data)} bytes; the limit is {cap} bytes")
    return data


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int, what: str) -> bytes:
    # The declared size can lie (zip bombs), so the read itself is bounded too.
    if info.file_size > cap:
        raise BundleSizeError(
            f"{what}: {info.filename} is {info.file_size} bytes; the limit is {cap} bytes"
        )
    try:
        with archive.open(info) as member:
            data = member.read(cap + 1)
    except (zipfile.BadZipFile, OSError, NotImplementedError, RuntimeError) as exc:
        raise BundleFormatError(f"{what}: {info.filename} cannot be read ({exc})") from exc
    if len(data) > cap:
        raise BundleSizeError(f"{what}: {info.filename} is larger than the limit of {cap} bytes")
    return data


def _check_model(manifest: Manifest, model_bytes: bytes, what: str) -> None:
    if len(model_bytes) != manifest.model.size:
        raise ModelIntegrityError(
            f"{what}: model.tflite is {len(model_bytes)} bytes but the manifest says "
            f"{manifest.model.size}; the bundle is truncated or was altered"
        )
    digest = hashlib.sha256(model_bytes).hexdigest()
    if digest != manifest.model.sha256:
        raise ModelIntegrityError(
            f"{what}: model.tflite sha256 is {digest[:12]}… but the manifest says "
            f"{manifest.model.sha256[:12]}…; the bundle was altered"
        )
