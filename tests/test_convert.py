"""`edgewatch convert` end to end: a real tiny model, every level, read back as a device would."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from converters import convert as convert_module
from converters.bundle_writer import generate_keys, load_private_key
from converters.calibration import IMAGE_EXTENSIONS, list_images, load_calibration_images
from converters.convert import ConversionResult, convert_model
from converters.edgetpu import COMPILER_NAME
from converters.keras_to_tflite import QUANT_LEVELS, import_tensorflow
from converters.model_dir import read_info
from converters.parity import parity_report, render_parity_table
from device.bundle.manifest import GoldenPair, QuantMode
from device.bundle.reader import read_bundle
from device.bundle.signing import load_public_key
from device.errors import (
    DatasetError,
    MissingExtraError,
    ModelMismatchError,
    SignatureInvalidError,
)
from device.runtime import load_for_manifest
from tests.helpers_models import LABELS, write_image_folder

pytestmark = pytest.mark.slow

#: A real edgetpu_compiler on PATH changes what the edgetpu level ships.
HAVE_COMPILER = shutil.which(COMPILER_NAME) is not None


@pytest.fixture(scope="session")
def model_dir(trained_model_dir: Path) -> Path:
    """conftest's session model (tests.helpers_models.make_trained_model_dir), trained once."""
    return trained_model_dir


@pytest.fixture(scope="module")
def converted(
    model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[QuantMode, ConversionResult]:
    out_dir = tmp_path_factory.mktemp("bundles")
    return {
        level: convert_model(model_dir, level, out_dir / f"tiny-{level}.ewm")
        for level in QUANT_LEVELS
    }


@pytest.mark.parametrize("level", QUANT_LEVELS)
def test_bundle_reads_back_with_the_manifest_the_device_needs(
    converted: dict[QuantMode, ConversionResult], model_dir: Path, level: QuantMode
) -> None:
    result = converted[level]
    bundle = read_bundle(result.out)
    manifest = bundle.manifest
    info = read_info(model_dir)
    assert manifest == result.manifest
    assert manifest.task == "image-classification"
    assert manifest.labels == LABELS
    assert manifest.quantization == level
    assert manifest.preprocessing == info.preprocessing
    assert manifest.decoding.apply_softmax is False  # the tiny model ends in Softmax
    assert manifest.decoding.background_labels == ("background",)
    assert manifest.thresholds.default == info.default_threshold
    assert manifest.model.size == len(bundle.model_bytes)
    assert manifest.model.sha256 == result.manifest.model.sha256
    assert manifest.inputs[0].shape == (1, 32, 32, 3)
    assert manifest.outputs[0].shape == (1, len(LABELS))
    expected_dtype = "int8" if level in ("int8", "edgetpu") else "float32"
    assert manifest.inputs[0].dtype == expected_dtype
    assert manifest.outputs[0].dtype == expected_dtype
    assert manifest.inputs[0].quantized is (expected_dtype == "int8")
    assert manifest.metrics is not None
    assert manifest.metrics.samples == result.parity.samples
    assert manifest.metrics.bundle_accuracy == result.parity.bundle_accuracy
    if level != "edgetpu" or not HAVE_COMPILER:
        assert manifest.edgetpu is False
    if manifest.edgetpu:
        return  # a compiled model only runs with the accelerator attached
    # The device's own loading path: tensor check and golden smoke test.
    runtime = load_for_manifest(manifest, bundle.model_bytes, threads=1, edgetpu="off")
    assert runtime.smoke_test(manifest) <= manifest.golden.tolerance
    # No path of the converting machine leaks into the manifest.
    assert str(model_dir) not in bundle.manifest_bytes.decode("utf-8")


def test_parity_figures_are_sane_and_written_next_to_the_bundle(
    converted: dict[QuantMode, ConversionResult],
) -> None:
    rows = [converted[level].parity for level in QUANT_LEVELS]
    print("\n" + render_parity_table(rows))
    reference = rows[0].reference_accuracy
    assert reference >= 0.4, "the tiny model should beat chance (0.25) clearly"
    for row in rows:
        assert row.reference_accuracy == reference
        assert row.samples >= 40
        assert abs(row.bundle_accuracy - reference) <= 0.1, row
        assert row.top1_agreement >= 0.85, row
        assert 0.0 < row.invoke_ms_p50 < 100.0
        parity_json = json.loads(converted[row.level].report_paths[0].read_text("utf-8"))
        assert parity_json["level"] == row.level
        assert parity_json["bundle_accuracy"] == row.bundle_accuracy
        assert parity_json["sha256"] == converted[row.level].manifest.model.sha256
    sizes = {row.level: row.size_bytes for row in rows}
    assert rows[0].top1_agreement == 1.0  # float32 computes what Keras computes
    assert sizes["float16"] < 0.7 * sizes["float32"]
    assert sizes["int8"] < 0.5 * sizes["float32"]
    assert sizes["dynamic"] < 0.5 * sizes["float32"]


def test_golden_pair_matches_the_tensor_specs_and_a_wrong_one_is_refused(
    converted: dict[QuantMode, ConversionResult],
) -> None:
    checked: tuple[QuantMode, ...] = ("float32", "int8")
    for level in checked:
        result = converted[level]
        bundle = read_bundle(result.out)
        manifest = bundle.manifest
        golden_out = GoldenPair.decode(manifest.golden.output_b64, manifest.outputs[0])
        assert golden_out.shape == (1, len(LABELS))
        if level == "int8":
            assert manifest.golden.tolerance == pytest.approx(2 * manifest.outputs[0].scale + 1e-6)
        else:
            assert manifest.golden.tolerance == pytest.approx(1e-4)
        wrong = np.roll(golden_out, 1, axis=-1)
        tampered = manifest.model_copy(
            update={
                "golden": manifest.golden.model_copy(
                    update={"output_b64": GoldenPair.encode(wrong)}
                )
            }
        )
        with pytest.raises(ModelMismatchError, match="smoke test failed"):
            load_for_manifest(tampered, bundle.model_bytes, threads=1, edgetpu="off")


def test_int8_levels_carry_an_edgetpu_report_with_every_op_supported(
    converted: dict[QuantMode, ConversionResult],
) -> None:
    integer_levels: tuple[QuantMode, ...] = ("int8", "edgetpu")
    float_levels: tuple[QuantMode, ...] = ("float32", "float16", "dynamic")
    for level in integer_levels:
        result = converted[level]
        assert result.edgetpu_report is not None
        assert result.edgetpu_report.all_supported, result.edgetpu_report.render_text()
        assert len(result.report_paths) == 2
        text = result.report_paths[1].read_text("utf-8")
        assert result.report_paths[1].name == f"tiny-{level}.edgetpu.txt"
        assert "0 unsupported" in text
    for level in float_levels:
        assert converted[level].edgetpu_report is None
        assert len(converted[level].report_paths) == 1
    assert converted["int8"].warnings == ()
    if HAVE_COMPILER:
        return
    # Without the compiler the edgetpu bundle ships the full-int8 model and says so.
    assert converted["edgetpu"].manifest.model == converted["int8"].manifest.model
    assert any("edgetpu_compiler was not found" in w for w in converted["edgetpu"].warnings)


def test_compiled_edgetpu_model_is_shipped_when_the_compiler_succeeds(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # edgetpu_compiler cannot be installed here (no network), so a stand-in with the same
    # command line writes the `<stem>_edgetpu.tflite` output the real one writes.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / COMPILER_NAME
    fake.write_text(
        f"#!{sys.executable}\n"
        "import pathlib, sys\n"
        "args = sys.argv[1:]\n"
        "out = pathlib.Path(args[args.index('-o') + 1])\n"
        "src = pathlib.Path(args[-1])\n"
        "(out / (src.stem + '_edgetpu.tflite')).write_bytes(src.read_bytes() + b'EDGETPU')\n"
        "print('Model compiled successfully')\n",
        encoding="utf-8",
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    result = convert_model(model_dir, "edgetpu", tmp_path / "tpu.ewm")
    bundle = read_bundle(result.out)
    assert bundle.manifest.edgetpu is True
    assert bundle.model_bytes.endswith(b"EDGETPU")
    assert result.parity.size_bytes == len(bundle.model_bytes)
    assert result.warnings == ()
    report_text = result.report_paths[1].read_text("utf-8")
    assert "Compiler: succeeded" in report_text
    assert str(tmp_path) not in report_text


def test_signed_bundle_verifies_with_its_key_only(model_dir: Path, tmp_path: Path) -> None:
    private_path, public_path = generate_keys(tmp_path / "keys")
    _, other_public = generate_keys(tmp_path / "other")
    result = convert_model(model_dir, "float32", tmp_path / "signed.ewm", sign_key=private_path)
    bundle = read_bundle(result.out, public_key=load_public_key(public_path))
    assert bundle.signed
    assert bundle.manifest.model == result.manifest.model
    with pytest.raises(SignatureInvalidError):
        read_bundle(result.out, public_key=load_public_key(other_public))
    assert load_private_key(private_path).public_key() is not None


def test_calibration_folder_is_used_and_unreadable_files_are_skipped(
    model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    images = tmp_path / "calib"
    written = write_image_folder(images, per_class=5)
    (images / "circle" / "broken.png").write_bytes(b"not an image")
    (images / "notes.txt").write_text("ignored", encoding="utf-8")
    spec = read_info(model_dir).preprocessing

    with caplog.at_level(logging.WARNING, logger="converters.calibration"):
        samples = load_calibration_images(images, spec)
    assert len(samples) == written
    assert samples.x.shape[1:] == (32, 32, 3)
    assert samples.x.dtype == np.uint8
    assert "skipped 1 unreadable" in caplog.text
    assert len(load_calibration_images(images, spec, limit=7)) == 7

    result = convert_model(model_dir, "int8", tmp_path / "calibrated.ewm", calibration_dir=images)
    assert result.manifest.provenance["calibration"] == "calib"
    assert result.manifest.inputs[0].dtype == "int8"
    assert result.parity.top1_agreement >= 0.8


def test_empty_calibration_folder_is_a_dataset_error(model_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here", encoding="utf-8")
    out = tmp_path / "never.ewm"
    with pytest.raises(DatasetError, match="no readable images"):
        convert_model(model_dir, "int8", out, calibration_dir=empty)
    assert not out.exists()


def test_a_bundle_the_device_would_refuse_is_deleted(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A negative tolerance makes every smoke test fail, as a broken golden pair would.
    monkeypatch.setitem(convert_module.FLOAT_TOLERANCE, "float32", -1.0)
    out = tmp_path / "refused.ewm"
    with pytest.raises(ModelMismatchError):
        convert_model(model_dir, "float32", out)
    assert not out.exists()


def test_list_images_is_recursive_sorted_and_filtered(tmp_path: Path) -> None:
    for name in ("b/2.PNG", "a/1.jpg", "a/sub/0.pgm", "c.bmp", "d.txt", "e.jpeg"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert found == ["a/1.jpg", "a/sub/0.pgm", "b/2.PNG", "c.bmp", "e.jpeg"]
    assert ".pgm" in IMAGE_EXTENSIONS
    with pytest.raises(DatasetError):
        list_images(tmp_path / "missing")


def test_parity_report_renders_a_markdown_table(model_dir: Path) -> None:
    rows = parity_report(model_dir, ["float32", "int8"], threads=1)
    assert [row.level for row in rows] == ["float32", "int8"]
    table = render_parity_table(rows)
    lines = table.splitlines()
    assert lines[0].startswith("| level |")
    assert len(lines) == 4
    assert lines[2].startswith("| float32 |") and "1.00x" in lines[2]
    assert lines[3].startswith("| int8 |")


def test_missing_tensorflow_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(MissingExtraError, match=r"edgewatch\[train\]"):
        import_tensorflow()
