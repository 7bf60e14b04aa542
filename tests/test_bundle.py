"""The bundle reader refuses every malformed, altered or oversized bundle, each with its reason."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from converters.bundle_writer import generate_keys, load_private_key, write_bundle
from device.bundle.manifest import Manifest
from device.bundle.reader import read_bundle
from device.bundle.signing import load_public_key
from device.errors import (
    BundleFormatError,
    BundleMemberError,
    BundleSizeError,
    BundleTaskError,
    ConfigError,
    ManifestError,
    ModelIntegrityError,
    SignatureInvalidError,
    SignatureMissingError,
)


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def signed_bundle(
    int8_bundle: Path, keys: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    bundle = read_bundle(int8_bundle)
    out = tmp_path_factory.mktemp("signed") / "signed.ewm"
    write_bundle(out, bundle.manifest, bundle.model_bytes, load_private_key(keys[0]))
    return out


def test_valid_bundle_reads_with_its_manifest(int8_bundle: Path) -> None:
    bundle = read_bundle(int8_bundle)
    assert bundle.manifest.task == "image-classification"
    assert bundle.manifest.quantization == "int8"
    assert set(_members(int8_bundle)) == {"manifest.json", "model.tflite"}
    # The stored manifest is its own canonical encoding, the signature's input.
    assert bundle.manifest.canonical_bytes() == _members(int8_bundle)["manifest.json"]


def test_signed_bundle_verifies_with_the_right_key(
    signed_bundle: Path, keys: tuple[Path, Path]
) -> None:
    bundle = read_bundle(signed_bundle, public_key=load_public_key(keys[1]))
    assert bundle.signed


def test_signature_from_another_key_is_refused(signed_bundle: Path, tmp_path: Path) -> None:
    _, other_public = generate_keys(tmp_path / "other")
    with pytest.raises(SignatureInvalidError, match="altered or signed with another key"):
        read_bundle(signed_bundle, public_key=load_public_key(other_public))


def test_unsigned_bundle_is_refused_when_a_key_is_configured(
    int8_bundle: Path, keys: tuple[Path, Path]
) -> None:
    with pytest.raises(SignatureMissingError, match="only accepts signed bundles"):
        read_bundle(int8_bundle, public_key=load_public_key(keys[1]))


def test_tampered_manifest_breaks_the_signature(
    signed_bundle: Path, keys: tuple[Path, Path]
) -> None:
    members = _members(signed_bundle)
    document = json.loads(members["manifest.json"])
    document["thresholds"]["default"] = 0.01
    members["manifest.json"] = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(SignatureInvalidError):
        read_bundle(_zip(members), public_key=load_public_key(keys[1]))


def test_truncated_signature_is_refused(signed_bundle: Path, keys: tuple[Path, Path]) -> None:
    members = _members(signed_bundle)
    members["manifest.sig"] = members["manifest.sig"][:10]
    with pytest.raises(SignatureInvalidError, match="64 bytes"):
        read_bundle(_zip(members), public_key=load_public_key(keys[1]))


def test_tampered_model_bytes_are_refused(int8_bundle: Path) -> None:
    members = _members(int8_bundle)
    model = bytearray(members["model.tflite"])
    model[len(model) // 2] ^= 0xFF
    members["model.tflite"] = bytes(model)
    with pytest.raises(ModelIntegrityError, match="sha256"):
        read_bundle(_zip(members))


def test_truncated_model_is_refused(int8_bundle: Path) -> None:
    members = _members(int8_bundle)
    members["model.tflite"] = members["model.tflite"][:-100]
    with pytest.raises(ModelIntegrityError, match="truncated"):
        read_bundle(_zip(members))


@pytest.mark.parametrize(
    "extra", ["notes.txt", "../manifest.json", "/etc/passwd", "sub/model.tflite", "MODEL.TFLITE"]
)
def test_extra_or_oddly_named_members_are_refused(int8_bundle: Path, extra: str) -> None:
    members = _members(int8_bundle)
    members[extra] = b"x"
    with pytest.raises(BundleMemberError, match="unexpected members"):
        read_bundle(_zip(members))


def test_duplicate_member_is_refused(int8_bundle: Path) -> None:
    members = _members(int8_bundle)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        with pytest.warns(UserWarning, match="Duplicate name"):
            archive.writestr("model.tflite", b"evil")
    with pytest.raises(BundleMemberError, match="twice"):
        read_bundle(buffer.getvalue())


def test_missing_model_is_refused(int8_bundle: Path) -> None:
    members = _members(int8_bundle)
    del members["model.tflite"]
    with pytest.raises(BundleMemberError, match=r"no model\.tflite"):
        read_bundle(_zip(members))


def test_oversize_model_is_refused_before_reading(int8_bundle: Path) -> None:
    with pytest.raises(BundleSizeError, match="limit"):
        read_bundle(int8_bundle, max_model_bytes=1000)


def test_zip_bomb_member_is_refused(int8_bundle: Path) -> None:
    members = _members(int8_bundle)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.json", b" " * (5 * 1024 * 1024))
        archive.writestr("model.tflite", members["model.tflite"])
    assert len(buffer.getvalue()) < 100_000  # small on disk, huge when inflated
    with pytest.raises(BundleSizeError, match=r"manifest\.json"):
        read_bundle(buffer.getvalue())


def test_not_a_zip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.ewm"
    path.write_bytes(b"TFL3 this is not a zip")
    with pytest.raises(BundleFormatError, match="not a zip"):
        read_bundle(path)
    with pytest.raises(BundleFormatError, match="does not exist"):
        read_bundle(tmp_path / "missing.ewm")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(schema=99), "schema 99 is not supported"),
        (lambda d: d.pop("labels"), "labels"),
        (lambda d: d.update(task="dance"), "task"),
        (lambda d: d.update(surprise=1), "surprise"),
        (lambda d: d["thresholds"]["per_label"].update(unicorn=0.5), "unknown labels"),
    ],
)
def test_invalid_manifest_is_refused_with_the_key(int8_bundle: Path, mutate, message: str) -> None:
    members = _members(int8_bundle)
    document = json.loads(members["manifest.json"])
    mutate(document)
    members["manifest.json"] = json.dumps(document).encode()
    with pytest.raises(ManifestError, match=message):
        read_bundle(_zip(members))


def test_manifest_that_is_not_json_is_refused(int8_bundle: Path) -> None:
    members = _members(int8_bundle)
    members["manifest.json"] = b"\xff\xfe not json"
    with pytest.raises(ManifestError, match="not valid UTF-8 JSON"):
        read_bundle(_zip(members))


def test_bundle_of_the_wrong_task_is_refused(int8_bundle: Path) -> None:
    bundle = read_bundle(int8_bundle)
    with pytest.raises(BundleTaskError, match="needs a audio-classification model"):
        bundle.require_task("audio-classification")


def test_keys_are_not_overwritten(keys: tuple[Path, Path]) -> None:
    with pytest.raises(ConfigError, match="already exists"):
        generate_keys(keys[0].parent)
    assert keys[0].stat().st_mode & 0o777 == 0o600


def test_public_key_file_that_is_not_a_key_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.pub"
    path.write_text("hello")
    with pytest.raises(ConfigError, match="not a PEM public key"):
        load_public_key(path)


def test_manifest_round_trips_through_canonical_bytes(int8_bundle: Path) -> None:
    manifest = read_bundle(int8_bundle).manifest
    again = Manifest.model_validate_json(manifest.canonical_bytes())
    assert again == manifest
