"""Sensor anomaly detection end to end: generated signals → `edgewatch train
sensor-anomaly` → int8 bundle → the device's pipeline, evaluate and bench."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from device.bundle.manifest import Manifest, ReconstructionDecoding, SensorPreprocessing
from device.bundle.reader import Bundle, read_bundle
from device.cli import main
from device.errors import DatasetError
from device.logs.tail import TailOptions
from device.mqtt.payloads import Event, ModelRef
from device.pipelines.sensor_anomaly import SensorAnomalyPipeline, SensorTransition
from device.runtime import load_for_manifest
from device.sensors.config import SensorAnomalyPipelineConfig
from device.sensors.filetail import SensorFileSource
from device.sensors.reading import Reading
from device.sensors.series import read_csv_series
from device.sensors.windows import SeriesWindower, window_arrays
from tests.helpers_sensors import WINDOW, Trained
from training.synthetic.signals import (
    GeneratedSeries,
    generate_series,
    spread_anomalies,
    write_labels,
    write_series_csv,
)

INTERVAL = 60.0
KINDS = ("spike", "drift", "flatline", "spike", "flatline", "drift")


def _pipeline(bundle_path: Path, **config: object) -> SensorAnomalyPipeline:
    bundle = read_bundle(bundle_path)
    runtime = load_for_manifest(bundle.manifest, bundle.model_bytes, 1, "off")
    settings = SensorAnomalyPipelineConfig(source="pump", model=bundle_path, **config)  # type: ignore[arg-type]
    return SensorAnomalyPipeline("pump-anomaly", settings, bundle, runtime)


def _readings(series: GeneratedSeries, name: str = "pump") -> list[Reading]:
    return [
        Reading("pump", name, t, tuple(row), series.columns, t)
        for t, row in zip(series.timestamps.tolist(), series.values.tolist(), strict=True)
    ]


def _test_series(seed: int = 42) -> GeneratedSeries:
    anomalies = spread_anomalies(3000, KINDS, lead=400, spacing=420, duration=40)
    return generate_series(3000, anomalies, seed=seed)


def test_training_and_int8_conversion(sensor_model: Trained) -> None:
    assert "threshold" in sensor_model.stdout and "model folder" in sensor_model.stdout
    info = json.loads((sensor_model.model_dir / "model_info.json").read_text())
    assert info["task"] == "sensor-anomaly"
    # Per file: the text line, and the "n/a" and "ERR" rows (with one value column, a
    # row whose only value is missing gives no reading).
    assert int(info["provenance"]["bad_rows"]) == 6
    for name in ("curves.png", "scores.png", "report.json", "report.md"):
        assert (sensor_model.model_dir / "report" / name).stat().st_size > 0
    bundle = read_bundle(sensor_model.bundle)
    manifest = bundle.manifest
    assert manifest.task == "sensor-anomaly" and manifest.labels == ("anomaly",)
    assert manifest.quantization == "int8"
    assert manifest.inputs[0].dtype == "int8" and manifest.outputs[0].dtype == "int8"
    assert manifest.inputs[0].shape == (1, WINDOW, 1)
    spec = manifest.preprocessing
    assert isinstance(spec, SensorPreprocessing)
    assert spec.column_names == ("value",) and spec.interval_s == INTERVAL
    assert spec.columns[0].mean == pytest.approx(50.0, abs=1.0)
    decoding = manifest.decoding
    assert isinstance(decoding, ReconstructionDecoding)
    assert decoding.threshold > 0 and (decoding.quantile, decoding.margin) == (0.995, 1.5)
    # Parity of the int8 model with the Keras model on held-out normal windows.
    parity = json.loads(sensor_model.bundle.with_name("pump-int8.parity.json").read_text())
    assert parity["sensor"]["score_correlation"] > 0.95
    assert parity["top1_agreement"] >= 0.98
    assert parity["bundle_accuracy"] >= 0.98  # held-out normal windows stay below threshold
    keras_threshold = parity["sensor"]["keras_threshold"]
    assert decoding.threshold == pytest.approx(keras_threshold, rel=0.25)
    # Every op is an int8 builtin the Edge TPU takes (no shape ops from a free batch).
    assert "0 unsupported" in sensor_model.bundle.with_name("pump-int8.edgetpu.txt").read_text()


def test_injected_anomalies_detected_and_normal_stretches_quiet(sensor_model: Trained) -> None:
    series = _test_series()
    pipeline = _pipeline(sensor_model.bundle)
    transitions = pipeline.process(_readings(series)) + pipeline.flush()
    starts = [t for t in transitions if t.type == "start"]
    ends = [t for t in transitions if t.type == "end"]
    assert len(starts) == len(ends) == len(series.anomalies), [
        (t.type, t.window_end) for t in transitions
    ]
    t0 = float(series.timestamps[0])
    for anomaly, event in zip(series.anomalies, starts, strict=True):
        onset = t0 + anomaly.start * INTERVAL
        delay = (event.captured_at - onset) / INTERVAL
        # Raised within 15 samples of the onset (a spike at once; a drift once it has
        # grown past the noise; a flat-line once the cycle should have moved on).
        assert 0 <= delay <= 15, (anomaly, delay)
    # Normal stretches: every window that touches no anomaly scores below the threshold
    # (here about 0.75 of it at most).
    results = _scored(sensor_model.bundle, series)
    # Windows ending from an anomaly's onset to a window's length after it hold some of it.
    spans = [(t0 + a.start * INTERVAL, t0 + (a.end + WINDOW) * INTERVAL)
             for a in series.anomalies]  # fmt: skip
    quiet = [r.score for r in results
             if not any(lo <= r.window_end <= hi for lo, hi in spans)]  # fmt: skip
    assert len(quiet) > 1500
    assert max(quiet) < pipeline.threshold


def _scored(bundle: Path, series: GeneratedSeries) -> list:  # type: ignore[type-arg]
    pipeline = _pipeline(bundle)
    results = []
    for reading in _readings(series):
        results.extend(pipeline.infer(reading))
    return results


def test_one_stretch_is_one_event_with_its_window(sensor_model: Trained) -> None:
    anomalies = spread_anomalies(900, ["spike"], lead=500, spacing=1)
    series = generate_series(900, anomalies, seed=7)
    pipeline = _pipeline(sensor_model.bundle, update_every_windows=5, min_windows=1)
    transitions = pipeline.process(_readings(series))
    types = [t.type for t in transitions]
    assert types[0] == "start" and types[-1] == "end" and set(types[1:-1]) <= {"update"}
    assert len({t.event_id for t in transitions}) == 1
    start, end = transitions[0], transitions[-1]
    spike_at = float(series.timestamps[500])
    assert start.window_end == spike_at  # raised by the first window that holds the spike
    assert start.window_start == spike_at - (WINDOW - 1) * INTERVAL
    assert start.score >= start.threshold == pipeline.threshold
    # The end spans the stretch: every window that held the spike.
    assert end.window_start == start.window_start
    assert end.window_end == spike_at + (WINDOW - 1) * INTERVAL
    assert end.score == max(t.score for t in transitions)
    assert end.duration_s == pytest.approx((2 * WINDOW - 2) * INTERVAL)
    event = _wire(end)
    assert event.sensor is not None and event.sensor.samples == WINDOW
    assert Event.model_validate_json(event.to_bytes()).sensor == event.sensor


def _wire(transition: SensorTransition) -> Event:
    return Event(
        device="pi", source=transition.source, seq=1, event_id=transition.event_id,
        type=transition.type, captured_at=transition.captured_at, published_at=0.0,
        latency_ms=0.0, model=ModelRef(name="m", version="1", sha256="0" * 64),
        task="sensor-anomaly", label=transition.label, score=transition.score,
        top_score=transition.top_score, duration_s=transition.duration_s,
        sensor=transition.sensor_window(), pipeline=transition.pipeline,
    )  # fmt: skip


def test_threshold_override_columns_and_series(sensor_model: Trained) -> None:
    series = _test_series(seed=5)
    quiet = _pipeline(sensor_model.bundle, threshold=1e6)
    assert quiet.process(_readings(series)) == []
    assert quiet.stats().inferences > 2900
    # A two-column reading: the univariate model reads the mapped column.
    mapped = _pipeline(sensor_model.bundle, columns={"value": "flow"})
    two = [Reading("pump", "p", r.timestamp, (0.0, r.values[0]), ("pressure", "flow"), 0.0)
           for r in _readings(series)]  # fmt: skip
    assert len([t for t in mapped.process(two) if t.type == "start"]) == len(KINDS)
    unmapped = _pipeline(sensor_model.bundle)
    assert unmapped.process(two) == [] and unmapped.stats().unmatched_readings == len(two)
    # Series filters, and one window state per series.
    filtered = _pipeline(sensor_model.bundle, series=("pump-*",))
    filtered.process(_readings(series, "pump-1")[:100] + _readings(series, "fan")[:100])
    stats = filtered.stats()
    assert stats.series == 1 and stats.unmatched_readings == 100
    filtered.set_threshold(0.5)
    assert filtered.threshold == 0.5
    # A series forgotten (max_series) with its event open: the event ends.
    crowded = _pipeline(sensor_model.bundle, max_series=1)
    anomalies = spread_anomalies(600, ["drift"], lead=500, spacing=1, duration=100)
    drifting = _readings(generate_series(600, anomalies, seed=9), "a")
    opened = crowded.process(drifting)
    assert [t.type for t in opened] == ["start"]
    ended = crowded.process(_readings(series, "b")[:1])
    assert [(t.type, t.series, t.event_id) for t in ended] == [("end", "a", opened[0].event_id)]


def _irregular_csv(path: Path) -> Path:
    """A recording with what real ones have: jitter, missing values, text where a number
    should be, a short gap (filled), a long gap (restarts the window), a row out of
    order and a header repeated in the middle."""
    series = generate_series(400, seed=11)
    rng = np.random.default_rng(11)
    lines = ["timestamp,value"]
    for index, (t, (v,)) in enumerate(zip(series.timestamps.tolist(), series.values.tolist(),
                                         strict=True)):  # fmt: skip
        if 100 <= index < 102 or 200 <= index < 220:
            continue  # gaps of 2 and 20 samples
        jitter = float(rng.uniform(-20, 20))
        value = "" if index % 37 == 0 else ("ERR" if index % 53 == 0 else f"{v:.3f}")
        lines.append(f"{t + jitter:.3f},{value}")
        if index == 300:
            lines.append(f"{t - 600:.3f},1.0")  # out of order
            lines.append("timestamp,value")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_training_and_device_windows_agree(sensor_model: Trained, tmp_path: Path) -> None:
    bundle = read_bundle(sensor_model.bundle)
    spec = bundle.manifest.preprocessing
    assert isinstance(spec, SensorPreprocessing)
    path = _irregular_csv(tmp_path / "replay.csv")
    # Training's path: the whole file read at once, windowed by window_arrays.
    loaded = read_csv_series(path)
    offline = window_arrays(spec, loaded.timestamps, loaded.values)
    assert offline.stats.restarts == 1 and offline.stats.out_of_order == 1
    assert offline.stats.filled_values > 0 and len(offline) > 200
    # The device's path: the file followed by the sensor source, readings windowed one
    # by one as the pipeline does.
    follow = TailOptions(start_at="beginning", poll_interval_s=0.02)
    source = SensorFileSource("replay", [path], None, tail=follow)
    source.start()
    windower = SeriesWindower(spec, "replay")
    live = []
    try:
        deadline = time.monotonic() + 10
        while len(live) < len(offline) and time.monotonic() < deadline:
            for reading in source.get_batch(100, timeout=0.1):
                live.extend(windower.push(reading.timestamp, reading.values))
    finally:
        source.stop()
    assert len(live) == len(offline)
    assert np.array_equal(np.stack([w.data for w in live]), offline.data)
    assert [w.start for w in live] == offline.starts.tolist()
    assert [w.end for w in live] == offline.ends.tolist()
    # And the pipeline's score of a window is the converter's (runtime.invoke) score.
    from converters.sensor_convert import runtime_scores

    runtime = load_for_manifest(bundle.manifest, bundle.model_bytes, 1, "off")
    pipeline = _pipeline(sensor_model.bundle)
    device_scores = [pipeline._invoke(window) for window in live[:50]]
    assert np.allclose(device_scores, runtime_scores(runtime, offline.data[:50]), rtol=1e-5)


def test_live_tail_to_events(sensor_model: Trained, tmp_path: Path) -> None:
    """A writer appends a recording while the source follows it: the pipeline turns the
    readings into one event for the spike in it."""
    anomalies = spread_anomalies(700, ["spike"], lead=450, spacing=1)
    series = generate_series(700, anomalies, seed=8)
    path = tmp_path / "live.csv"
    write_series_csv(path, series)
    rows = path.read_text().splitlines()
    path.write_text("\n".join(rows[:200]) + "\n")
    follow = TailOptions(start_at="beginning", poll_interval_s=0.02)
    source = SensorFileSource("pump", [path], tmp_path / "pos.json", tail=follow)
    pipeline = _pipeline(sensor_model.bundle)

    def write_rest() -> None:
        with path.open("a") as handle:
            for start in range(200, len(rows), 50):
                handle.write("\n".join(rows[start : start + 50]) + "\n")
                handle.flush()
                time.sleep(0.01)

    writer = threading.Thread(target=write_rest)
    source.start()
    writer.start()
    transitions: list[SensorTransition] = []
    try:
        deadline = time.monotonic() + 15
        while pipeline.stats().inferences < 700 - WINDOW and time.monotonic() < deadline:
            batch = source.get_batch(64, timeout=0.1)
            transitions.extend(pipeline.process(batch))
            source.ack(batch)
    finally:
        writer.join()
        source.stop()
    transitions += pipeline.flush()
    assert [t.type for t in transitions] == ["start", "end"]
    assert transitions[0].series == "pump"
    # The default min_windows (4): raised by the fourth window that holds the spike.
    assert transitions[0].window_end == float(series.timestamps[453])
    assert json.loads((tmp_path / "pos.json").read_text())["files"][0]["offset"] > 0


def test_evaluate_and_bench_commands(
    sensor_model: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "labelled"
    with_anomalies = _test_series(seed=21)
    normal = generate_series(1500, seed=22)
    write_series_csv(data / "plant" / "pump.csv", with_anomalies)
    write_series_csv(data / "plant" / "quiet.csv", normal)
    write_labels(data, {"plant/pump.csv": with_anomalies.anomaly_windows(pad=WINDOW)})
    assert main(["evaluate", str(sensor_model.bundle), str(data), "--json",
                 "--report", str(tmp_path / "report")]) == 0  # fmt: skip
    document = json.loads(capsys.readouterr().out)
    assert document["label_windows"] == len(KINDS)
    assert document["recall"] == 1.0 and document["event_precision"] == 1.0
    assert document["window_precision"] > 0.9
    assert document["files"][1]["events"] == 0  # the normal file stays quiet
    assert (tmp_path / "report" / "report.json").is_file()
    assert main(["evaluate", str(sensor_model.bundle), str(data), "--probation", "0.5"]) == 0
    text = capsys.readouterr().out
    assert "recall 1.000" in text and "probation" in text

    assert main(["bench", str(sensor_model.bundle), "--json", "--threads", "1",
                 "--frames", "300"]) == 0  # fmt: skip
    bench = json.loads(capsys.readouterr().out)
    assert bench["windows"] >= 300
    assert bench["raw_windows_per_s"] > bench["pipeline_windows_per_s"] > 500


def test_bad_training_folders(tmp_path: Path) -> None:
    from training.train_sensors import load_sensor_folder

    with pytest.raises(DatasetError, match=r"no \*\.csv"):
        load_sensor_folder(tmp_path)
    (tmp_path / "junk.csv").write_text("timestamp,value\nyesterday,abc\n,\nnan,nan\n")
    with pytest.raises(DatasetError, match="no readable rows"):
        load_sensor_folder(tmp_path)


def test_training_is_deterministic(tmp_path: Path) -> None:
    from training.train_sensors import SensorTrainOptions, train_sensor_model

    series = read_csv_series(write_series_csv(tmp_path / "a.csv", generate_series(400, seed=1)))
    options = SensorTrainOptions(window=16, epochs=3, progress=False, hidden=16, latent=4)
    first = train_sensor_model([series], tmp_path / "one", options)
    second = train_sensor_model([series], tmp_path / "two", options)
    assert first.threshold == second.threshold
    for name in ("calibration.npz", "heldout.npz"):
        with np.load(tmp_path / "one" / name) as a, np.load(tmp_path / "two" / name) as b:
            assert np.array_equal(a["x"], b["x"])


def test_manifest_refuses_mixed_kinds(sensor_model: Trained) -> None:
    manifest = read_bundle(sensor_model.bundle).manifest
    document = json.loads(manifest.canonical_bytes())
    document["task"] = "image-classification"
    with pytest.raises(ValidationError, match="belong together"):
        Manifest.model_validate(document)
    bad_scaling = json.loads(manifest.canonical_bytes())
    bad_scaling["preprocessing"]["columns"][0]["std"] = 0.0
    with pytest.raises(ValidationError):
        Manifest.model_validate(bad_scaling)


def test_a_sensor_bundle_is_refused_by_the_image_pipeline(sensor_model: Trained) -> None:
    from device.config import ClassificationPipeline as ImageConfig
    from device.errors import BundleTaskError
    from device.pipelines.classification import ClassificationPipeline

    bundle: Bundle = read_bundle(sensor_model.bundle)
    runtime = load_for_manifest(bundle.manifest, bundle.model_bytes, 1, "off")
    with pytest.raises(BundleTaskError):
        ClassificationPipeline("p", ImageConfig(source="s", model=sensor_model.bundle), bundle,
                               runtime)  # fmt: skip
    assert not math.isnan(bundle.manifest.decoding.threshold)  # type: ignore[union-attr]


def test_resampling_grid_is_chosen_from_the_data() -> None:
    from device.sensors.series import SeriesData
    from training.train_sensors import choose_interval

    regular = 1000.0 + 60.0 * np.arange(500) + np.random.default_rng(1).uniform(-5, 5, 500)
    values = np.zeros((500, 1))
    assert choose_interval([SeriesData("a", regular, values, ("v",))]) == pytest.approx(60, abs=3)
    # A feed that skips one sample in five has no useful grid: every sample is a step.
    irregular = np.cumsum(np.where(np.arange(500) % 5 == 0, 180.0, 60.0))
    assert choose_interval([SeriesData("b", irregular, values, ("v",))]) is None
