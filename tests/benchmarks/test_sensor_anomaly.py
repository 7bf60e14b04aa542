"""Sensor anomaly detection on real data (NAB) and the pipeline's throughput.

* NAB: for every labelled series of the folders present (artificialWithAnomaly,
  realAdExchange, realAWSCloudwatch, realKnownCause, realTraffic, realTweets), a model is
  trained on the first 15% (NAB's probationary period, taken as normal), converted to
  int8 and the whole file replayed through the device's pipeline; recall of the labelled
  windows and precision of the events are counted on the remaining 85%
  (``tests/benchmarks/nab_sensors.py`` runs the same without pytest). Found through
  ``EDGEWATCH_NAB``, else ``shared/datasets/nab`` next to the repository; skipped when
  absent. ``EDGEWATCH_NAB_FOLDERS`` (comma-separated) narrows the folders.
* Throughput: windows per second of the raw interpreter and of the pipeline's whole path
  on one core, measured side by side on a model trained on generated signals.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from device.bench_sensors import run_sensor_bench
from tests.benchmarks.conftest import report
from tests.benchmarks.nab_sensors import DEFAULT_FOLDERS, nab_dir, run_nab
from training.synthetic.signals import generate_series, write_series_csv

#: Floors well below what was measured (docs/sensors.md), to catch a broken pipeline
#: rather than to grade the model.
MIN_RECALL = 0.5
MIN_EVENT_PRECISION = 0.2


@pytest.mark.slow
@pytest.mark.timeout(7200)  # 53 models trained and converted: 15 to 30 min on two cores
def test_nab_recall_and_precision(tmp_path: Path) -> None:
    root = nab_dir()
    if not (root / "labels" / "combined_windows.json").is_file():
        pytest.skip(f"NAB not found at {root}; set EDGEWATCH_NAB to its folder")
    chosen = os.environ.get("EDGEWATCH_NAB_FOLDERS")
    folders = tuple(chosen.split(",")) if chosen else DEFAULT_FOLDERS
    run = run_nab(root, folders, work=tmp_path)
    assert run.files, f"none of {folders} found in {root}"
    report(
        "Sensor anomaly: NAB, one int8 autoencoder per series trained on its first 15%",
        [
            *run.folder_rows(),
            f"all: recall {run.recall:.3f} ({run.total('detected_label_windows')}/"
            f"{run.total('label_windows')} labelled windows), window precision "
            f"{run.window_precision:.3f}",
            f"events: recall {run.event_recall:.3f} ({run.total('evented_label_windows')}/"
            f"{run.total('label_windows')}), precision {run.event_precision:.3f} "
            f"({run.total('events_in_label')}/{run.total('events')} events)",
            f"{len(run.files)} series, {run.windows} windows scored at "
            f"{run.windows / max(run.score_s, 1e-9):,.0f} windows/s; training and "
            f"conversion {run.train_s:.0f} s",
        ],
        "met" if run.recall >= MIN_RECALL and run.event_precision >= MIN_EVENT_PRECISION
        else "NOT met",
    )  # fmt: skip
    assert run.recall >= MIN_RECALL
    assert run.event_precision >= MIN_EVENT_PRECISION


@pytest.mark.slow
def test_windows_per_second_on_one_core(tmp_path: Path) -> None:
    from converters.convert import convert_model
    from training.train_sensors import SensorTrainOptions, train_sensor_anomaly

    for index in range(2):
        write_series_csv(tmp_path / "data" / f"s{index}.csv", generate_series(1500, seed=index))
    train_sensor_anomaly(tmp_path / "data", tmp_path / "model",
                         SensorTrainOptions(epochs=20, progress=False))  # fmt: skip
    bundle = convert_model(tmp_path / "model", "int8", tmp_path / "s.ewm").out
    result = run_sensor_bench(bundle, threads=1, windows=5000)
    report(
        "Sensor anomaly: windows/s on one core (int8, window 32, hop 1)",
        [
            f"raw invoke: {result.raw_windows_per_s:,.0f} windows/s "
            f"(p50 {result.raw_invoke_ms_p50:.4f} ms)",
            f"pipeline (resample, fill, scale, window, quantize, invoke, score, debounce): "
            f"{result.pipeline_windows_per_s:,.0f} windows/s, "
            f"{result.pipeline_readings_per_s:,.0f} readings/s "
            f"({result.pipeline_over_raw:.3f}x raw)",
        ],
        "met" if result.pipeline_windows_per_s >= 1000 else "NOT met",
    )
    assert result.pipeline_windows_per_s >= 1000
