"""The sensor-anomaly branches of `edgewatch train` and `edgewatch evaluate`.

Kept out of device/cli.py so the console script only dispatches; imported lazily there,
so `edgewatch run` never loads training code.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from training.evaluate_sensors import evaluate_sensor_bundle
from training.train_sensors import SensorTrainOptions, train_sensor_anomaly
from training.versioning import timestamp_version


def train_command(args: argparse.Namespace) -> int:
    options = SensorTrainOptions(
        window=args.window,
        hop=args.hop,
        interval_s=args.interval,
        columns=tuple(c.strip() for c in args.columns.split(",")) if args.columns else None,
        epochs=args.epochs,
        **({"batch_size": args.batch_size} if args.batch_size else {}),
        seed=args.seed,
        patience=args.patience,
        version=args.model_version or timestamp_version(),
        **({"name": args.name} if args.name else {}),
    )
    if args.quantile is not None:
        options = replace(options, quantile=args.quantile)
    if args.margin is not None:
        options = replace(options, margin=args.margin)
    result = train_sensor_anomaly(args.data_dir, args.out, options)
    spec = result.preprocessing
    sys.stdout.write(
        f"trained {result.epochs_run} epochs on {result.train_windows} windows of "
        f"{spec.window} x {len(spec.columns)} ({', '.join(spec.column_names)}); "
        f"threshold {result.threshold:.4g} (validation p99 at {result.val_score_p99:.2f} of it)\n"
        f"model folder: {result.out_dir}\n"
    )
    return 0


def evaluate_command(args: argparse.Namespace) -> int:
    result = evaluate_sensor_bundle(
        args.bundle, args.data_dir, threads=args.threads, out_dir=args.report,
        probation=args.probation,
    )  # fmt: skip
    sys.stdout.write(
        (json.dumps(result.to_dict(), indent=2) if args.json else result.render_text()) + "\n"
    )
    return 0
