"""A sensor-anomaly model trained once per test session through the CLI."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

from device.cli import main
from training.synthetic.signals import generate_series, write_series_csv

WINDOW = 32


@dataclass(frozen=True)
class Trained:
    model_dir: Path
    bundle: Path
    stdout: str


def train_sensor_model(root: Path) -> Trained:
    """Two files of normal operation (with a few bad rows and missing values, as real
    recordings have), trained and converted through the CLI."""
    data = root / "pump"
    for index in range(2):
        path = write_series_csv(data / f"run{index}.csv", generate_series(1400, seed=index))
        lines = path.read_text().splitlines()
        lines[50] = lines[50].split(",")[0] + ",n/a"  # missing: filled from the last value
        lines[90] = "this is not a row"
        lines[91] = lines[91].split(",")[0] + ",ERR"
        path.write_text("\n".join(lines) + "\n")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["train", "sensor-anomaly", str(data), "--out", str(root / "model"),
                     "--epochs", "30", "--window", str(WINDOW), "--seed", "3"]) == 0  # fmt: skip
        bundle = root / "pump-int8.ewm"
        assert main(["convert", str(root / "model"), "--quant", "int8", "--out",
                     str(bundle)]) == 0  # fmt: skip
    return Trained(root / "model", bundle, out.getvalue())
