"""The `edgewatch` command: one console script for the device and the workstation.

Device commands (run, check-config, watch, demo, bench, keys, models) and the clients
push and collect need only the device extra. Workstation commands (train, convert,
evaluate) import TensorFlow lazily, inside their handlers, so that `edgewatch run` on a
Pi never touches it and a missing train extra is reported in one line instead of a
traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from device import __version__
from device.errors import EdgewatchError, MissingExtraError

log = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace], int]


def _broker(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value!r}")
    return int(value)


def _share(value: str) -> float:
    """A share of a data folder: a number in [0, 1)."""
    try:
        share = float(value)
    except ValueError:
        share = -1.0
    if not 0.0 <= share < 1.0:
        raise argparse.ArgumentTypeError(f"expected a share in [0, 1), got {value!r}")
    return share


class _ExplicitInt(argparse.Action):
    """Stores an int and remembers that the user gave it, for options whose default
    differs by task (``_given``)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        setattr(namespace, f"_{self.dest}_given", True)


def _given(args: argparse.Namespace, dest: str) -> bool:
    return bool(getattr(args, f"_{dest}_given", False))


def _cmd_run(args: argparse.Namespace) -> int:
    from device.config import load_config
    from device.daemon import run_daemon

    config = load_config(args.config)
    return run_daemon(config, config_path=args.config)


def _cmd_ha_remove(args: argparse.Namespace) -> int:
    from device.config import load_config
    from device.homeassistant import remove_device

    config = load_config(args.config)
    cleared = remove_device(config)
    sys.stdout.write(
        f"cleared {cleared} Home Assistant discovery config(s) of device {config.device.id}\n"
    )
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    from device.check import check_config

    report = check_config(args.file, open_sources=not args.no_sources)
    sys.stdout.write(report.render() + "\n")
    return 0 if report.ok else 1


def _cmd_watch(args: argparse.Namespace) -> int:
    from device.config import load_config
    from device.watch import run_watch

    mqtt = load_config(args.config).mqtt if args.config else None
    if args.broker is not None:
        host, port = args.broker
    elif mqtt is not None:
        host, port = mqtt.host, mqtt.port
    else:
        host, port = "localhost", 1883
    prefix = args.prefix or (mqtt.prefix if mqtt else "edgewatch")
    run_watch(
        host, port, prefix=prefix, device=args.device, as_json=args.json, config_for_tls=mqtt
    )
    return 0


def _cmd_collect(args: argparse.Namespace) -> int:
    """Exit 0 when examples were collected (or were all already in the folder), 1 when
    the device had none, 2 on errors (no broker, silent device, refusal)."""
    from device.config import load_config
    from training.collect import CollectOptions, collect_examples

    mqtt = load_config(args.config).mqtt if args.config else None
    if args.broker is not None:
        host, port = args.broker
    elif mqtt is not None:
        host, port = mqtt.host, mqtt.port
    else:
        host, port = "localhost", 1883
    options = CollectOptions(
        device=args.device,
        out=args.out,
        host=host,
        port=port,
        prefix=args.prefix or (mqtt.prefix if mqtt else "edgewatch"),
        mqtt=mqtt,
        max_items=args.max,
        keep_on_device=args.keep_on_device,
        timeout_s=args.timeout,
    )
    report = collect_examples(options)
    if report.received == 0 and not report.unsupported and not report.damaged:
        sys.stdout.write(f"device {args.device} has no examples to collect\n")
        return 1
    sys.stdout.write(report.render() + "\n")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from device.demo import run_demo

    return run_demo(port=args.port, duration_s=args.duration, show_watch=not args.no_watch)


def _bundle_task(path: Path) -> str:
    from device.bundle.reader import read_bundle

    return read_bundle(path).manifest.task


def _cmd_bench(args: argparse.Namespace) -> int:
    task = _bundle_task(args.bundle)
    if task == "audio-classification":
        from device.audio.bench import render_audio_bench, run_audio_bench

        audio = run_audio_bench(args.bundle, args.audio, threads=args.threads,
                                seconds=args.seconds)  # fmt: skip
        sys.stdout.write(
            (json.dumps(audio.to_dict(), indent=2) if args.json else render_audio_bench(audio))
            + "\n"
        )
        return 0
    if task == "object-detection":
        from device.bench_detection import render_detection_bench, run_detection_bench

        detection = run_detection_bench(args.bundle, video=args.video, threads=args.threads,
                                        frames=args.frames)  # fmt: skip
        sys.stdout.write(
            (json.dumps(detection.to_dict(), indent=2) if args.json
             else render_detection_bench(detection)) + "\n"
        )  # fmt: skip
        return 0
    if task == "log-anomaly":
        from device.bench_logs import render_log_bench, run_log_bench

        logs = run_log_bench(args.bundle, log_file=args.log, lines=args.lines,
                             threads=args.threads)  # fmt: skip
        sys.stdout.write(
            (json.dumps(logs.to_dict(), indent=2) if args.json else render_log_bench(logs)) + "\n"
        )
        return 0
    from device.bench import render_bench, run_bench
    from device.bench_sensors import is_sensor_bundle, sensor_bench_command

    if is_sensor_bundle(args.bundle):
        return sensor_bench_command(args)

    result = run_bench(args.bundle, video=args.video, threads=args.threads, frames=args.frames)
    sys.stdout.write(
        (json.dumps(result.to_dict(), indent=2) if args.json else render_bench(result)) + "\n"
    )
    return 0


def _cmd_keys(args: argparse.Namespace) -> int:
    from converters.bundle_writer import generate_keys

    private_path, public_path = generate_keys(args.dir)
    sys.stdout.write(
        f"signing key:      {private_path} (keep it on the workstation, mode 0600)\n"
        f"verification key: {public_path} (copy to devices; set runtime.public_key)\n"
    )
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from device.config import load_config
    from device.modelstore.local import activate, open_store, render_list, rollback

    config = load_config(args.config)
    store = open_store(config)
    if args.models_command == "list":
        sys.stdout.write(render_list(store, as_json=args.json) + "\n")
        return 0
    if args.models_command == "activate":
        result = activate(config, store, args.name, args.version, args.wait)
    else:
        result = rollback(store, args.name, args.wait)
    sys.stdout.write(result.message + "\n")
    return 0 if result.ok else 1


def _cmd_push(args: argparse.Namespace) -> int:
    from training.push import PushOptions, push_from_cli

    options = PushOptions(
        chunk_bytes=int(args.chunk_kib * 1024),
        timeout_s=args.timeout,
        discover_s=args.discover,
        progress=not args.no_progress,
    )
    return push_from_cli(
        args.bundle,
        device=args.device,
        group=args.group,
        broker=args.broker,
        config_path=args.config,
        prefix=args.prefix,
        options=options,
    )


def _cmd_train_audio(args: argparse.Namespace) -> int:
    from training.train_audio import AudioTrainOptions, train_audio_classifier
    from training.versioning import timestamp_version

    defaults = AudioTrainOptions()
    options = AudioTrainOptions(
        epochs=args.epochs if _given(args, "epochs") else defaults.epochs,
        seed=args.seed,
        batch_size=args.batch_size or defaults.batch_size,
        features=args.features,
        width=args.width or defaults.width,
        ensemble=args.ensemble or defaults.ensemble,
        synthetic_voices=args.synthetic_voices,
        val_fraction=defaults.val_fraction if args.val_fraction is None else args.val_fraction,
        test_fraction=(
            defaults.test_fraction if args.test_fraction is None else args.test_fraction
        ),
        keywords=tuple(k for k in args.keywords.split(",") if k) if args.keywords else None,
        version=args.model_version or timestamp_version(),
        **({"name": args.name} if args.name else {}),
    )
    result = train_audio_classifier(args.data_dir, args.out, options)
    heldout = (
        f"held-out speakers: accuracy {result.test_accuracy:.3f} on {result.test_clips} clips"
        if result.test_accuracy is not None
        else "no speakers held out (nothing measured on unheard speakers)"
    )
    validation = (
        f"validation speakers {result.val_accuracy:.3f}" if result.val_clips else "no validation"
    )
    sys.stdout.write(
        f"trained {result.epochs_run} epochs on {result.train_clips} clips; {heldout} "
        f"({validation})\nmodel folder: {result.out_dir}\n"
    )
    return 0


def _cmd_train_logs(args: argparse.Namespace) -> int:
    from training.train_logs import LogTrainOptions, train_log_anomaly
    from training.versioning import timestamp_version

    options = LogTrainOptions(
        epochs=args.epochs,
        seed=args.seed,
        batch_size=args.batch_size or 256,
        history=args.history,
        top_g=args.top_g,
        min_probability=args.min_probability,
        architecture=args.architecture,
        input_format=args.format,
        train_fraction=args.train_fraction,
        patience=args.patience,
        version=args.model_version or timestamp_version(),
        **({"name": args.name} if args.name else {}),
    )
    result = train_log_anomaly(args.data_dir, args.out, options)
    sys.stdout.write(
        f"trained {result.epochs_run} epochs on {result.train_windows} windows "
        f"({result.templates} {'templates' if result.input_format == 'lines' else 'events'}); "
        f"held-out next events: top-1 {result.val_top1:.3f}, judged normal "
        f"{result.val_normal_rate:.4f} (top-{result.top_g}, probability floor "
        f"{result.min_probability:.3g})\nmodel folder: {result.out_dir}\n"
    )
    return 0


def _cmd_train_detection(args: argparse.Namespace) -> int:
    from training.train_detection import DetectionTrainOptions, train_detector
    from training.versioning import timestamp_version

    defaults = DetectionTrainOptions()
    labels = tuple(x.strip() for x in args.labels.split(",") if x.strip()) if args.labels else None
    options = DetectionTrainOptions(
        epochs=args.epochs if _given(args, "epochs") else defaults.epochs,
        seed=args.seed,
        input_size=defaults.input_size if args.input_size is None else args.input_size,
        alpha=defaults.alpha if args.alpha is None else args.alpha,
        color=args.color or defaults.color,
        batch_size=args.batch_size or defaults.batch_size,
        patience=args.patience if _given(args, "patience") else defaults.patience,
        warmup_epochs=(
            defaults.warmup_epochs if args.warmup_epochs is None else args.warmup_epochs
        ),
        labels=labels,
        version=args.model_version or timestamp_version(),
        **({"name": args.name} if args.name else {}),
    )
    result = train_detector(args.data_dir, args.out, options)
    metrics = result.test_metrics
    sys.stdout.write(
        f"trained {result.epochs_run} epochs (best {result.best_epoch}); threshold "
        f"{result.threshold:.2f} (validation F1 {result.val_f1:.3f}); held-out "
        f"{len(result.split.test)} images: precision {metrics.precision:.3f}, recall "
        f"{metrics.recall:.3f}, F1 {metrics.f1:.3f}\nmodel folder: {result.out_dir}\n"
    )
    return 0


#: The image networks' flags and the tasks that take each. argparse accepts every
#: flag of ``train`` for every task; a flag given to a task that would ignore it is
#: refused rather than silently dropped.
_IMAGE_NETWORK_FLAGS: dict[str, tuple[str, ...]] = {
    "--input-size": ("image-classification", "object-detection"),
    "--alpha": ("image-classification", "object-detection"),
    "--color": ("image-classification", "object-detection"),
    "--warmup-epochs": ("image-classification", "object-detection"),
    "--pretrained": ("image-classification",),
    "--blocks": ("image-classification",),
}


def _refuse_foreign_flags(args: argparse.Namespace) -> None:
    shares = (("--val-fraction", args.val_fraction), ("--test-fraction", args.test_fraction))
    given = [flag for flag, value in shares if value is not None]
    if given and args.task != "audio-classification":
        raise EdgewatchError(
            f"{' and '.join(given)}: only audio-classification takes a split share so far; "
            f"{args.task} splits by its fixed shares (see its docs)"
        )
    foreign = [
        flag
        for flag, tasks in _IMAGE_NETWORK_FLAGS.items()
        if getattr(args, flag[2:].replace("-", "_")) is not None and args.task not in tasks
    ]
    if foreign:
        raise EdgewatchError(
            f"{', '.join(foreign)}: {args.task} does not take "
            f"{'this option' if len(foreign) == 1 else 'these options'} (they shape the "
            "image networks); leave them out, or see `edgewatch train --help`"
        )


def _cmd_train(args: argparse.Namespace) -> int:
    _refuse_foreign_flags(args)
    if args.task == "object-detection":
        return _cmd_train_detection(args)
    if args.task == "audio-classification":
        return _cmd_train_audio(args)
    if args.task == "sensor-anomaly":
        from training.sensor_cli import train_command

        return train_command(args)
    if args.task == "log-anomaly":
        return _cmd_train_logs(args)
    if args.task != "image-classification":
        raise EdgewatchError(
            f"training for {args.task} is not available yet; supported: "
            "image-classification, object-detection, audio-classification, log-anomaly, "
            "sensor-anomaly"
        )
    from training.train_image import ImageTrainOptions, train_image_classifier
    from training.versioning import timestamp_version

    defaults = ImageTrainOptions()
    options = ImageTrainOptions(
        epochs=args.epochs,
        seed=args.seed,
        input_size=defaults.input_size if args.input_size is None else args.input_size,
        alpha=defaults.alpha if args.alpha is None else args.alpha,
        color=args.color or defaults.color,
        pretrained=args.pretrained,
        batch_size=args.batch_size or defaults.batch_size,
        blocks=defaults.blocks if args.blocks is None else args.blocks,
        patience=args.patience,
        warmup_epochs=defaults.warmup_epochs if args.warmup_epochs is None else args.warmup_epochs,
        version=args.model_version or timestamp_version(),
        **({"name": args.name} if args.name else {}),
    )
    result = train_image_classifier(args.data_dir, args.out, options)
    sys.stdout.write(
        f"trained {result.epochs_run} epochs; held-out accuracy {result.test_accuracy:.3f}\n"
        f"model folder: {result.out_dir}\n"
    )
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from converters.convert import convert_model
    from converters.keras_to_tflite import QUANT_LEVELS
    from converters.parity import render_parity_table

    levels = list(QUANT_LEVELS) if args.quant == "all" else [args.quant]
    rows = []
    for level in levels:
        out = args.out if len(levels) == 1 else args.out.with_name(f"{args.out.stem}-{level}.ewm")
        result = convert_model(
            args.model_dir,
            level,
            out,
            calibration_dir=args.calibration,
            sign_key=args.sign_key,
        )
        parity = result.parity
        rows.append(parity)
        detection = result.manifest.task == "object-detection"
        metric, agreement = ("F1", "cell agreement") if detection else (
            "accuracy", "top-1 agreement")  # fmt: skip
        sys.stdout.write(
            f"wrote {result.out} ({parity.size_bytes / 1024:.1f} KiB, {level}); held-out "
            f"{metric}: keras {parity.reference_accuracy:.3f}, bundle "
            f"{parity.bundle_accuracy:.3f}, {agreement} {parity.top1_agreement:.3f}, "
            f"invoke p50 {parity.invoke_ms_p50:.3f} ms\n"
        )
        if result.edgetpu_report is not None and level == levels[-1]:
            sys.stdout.write(result.edgetpu_report.render_text() + "\n")
        for warning in result.warnings:
            sys.stderr.write(f"warning: {warning}\n")
    if len(rows) > 1:
        detection = result.manifest.task == "object-detection"
        table = (
            render_parity_table(rows, metric="F1", agreement="cell agree")
            if detection else render_parity_table(rows)
        )  # fmt: skip
        report = args.out.with_name(f"{args.out.stem}.parity.md")
        report.write_text(table + "\n", encoding="utf-8")
        sys.stdout.write(f"\n{table}\n\nparity table written to {report}\n")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from device.bench_sensors import is_sensor_bundle
    if _bundle_task(args.bundle) == "object-detection":
        from training.evaluate_detection import evaluate_detection_bundle

        detection = evaluate_detection_bundle(args.bundle, args.data_dir, threads=args.threads,
                                              out_dir=args.report)  # fmt: skip
        sys.stdout.write(
            (json.dumps(detection.to_dict(), indent=2) if args.json
             else detection.render_text()) + "\n"
        )  # fmt: skip
        return 0
    if _bundle_task(args.bundle) == "log-anomaly":
        from training.evaluate_logs import evaluate_log_bundle

        logs = evaluate_log_bundle(args.bundle, args.data_dir, threads=args.threads,
                                   out_dir=args.report)  # fmt: skip
        sys.stdout.write(
            (json.dumps(logs.to_dict(), indent=2) if args.json else logs.render_text()) + "\n"
        )
        return 0
    from training.evaluate import evaluate_bundle

    if is_sensor_bundle(args.bundle):
        from training.sensor_cli import evaluate_command

        return evaluate_command(args)

    result = evaluate_bundle(args.bundle, args.data_dir, threads=args.threads, out_dir=args.report)
    sys.stdout.write(
        (json.dumps(result.to_dict(), indent=2) if args.json else result.render_text()) + "\n"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgewatch", description="Edge streaming inference over MQTT."
    )
    parser.add_argument("--version", action="version", version=f"edgewatch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the device daemon")
    run.add_argument("--config", type=Path, required=True, help="device config (TOML)")
    run.set_defaults(handler=_cmd_run)

    check = sub.add_parser("check-config", help="validate a device config without starting")
    check.add_argument("file", type=Path)
    check.add_argument(
        "--no-sources", action="store_true", help="do not try to open cameras and files"
    )
    check.set_defaults(handler=_cmd_check_config)

    watch = sub.add_parser("watch", help="live view of devices and their events")
    watch.add_argument("--broker", type=_broker, help="HOST:PORT (default localhost:1883)")
    watch.add_argument(
        "--config", type=Path, help="take broker, TLS, credentials and prefix from a device config"
    )
    watch.add_argument("--device", help="only this device")
    watch.add_argument("--prefix", help="topic prefix (default edgewatch)")
    watch.add_argument("--json", action="store_true", help="one JSON event per line")
    watch.set_defaults(handler=_cmd_watch)

    collect = sub.add_parser(
        "collect", help="pull a device's hard examples into a training folder"
    )
    collect.add_argument("--device", required=True, help="the device's id")
    collect.add_argument(
        "--out", type=Path, required=True, help="folder: OUT/<predicted label>/<id>.jpg"
    )
    collect.add_argument("--broker", type=_broker, help="HOST:PORT (default localhost:1883)")
    collect.add_argument(
        "--config", type=Path, help="take broker, TLS, credentials and prefix from a device config"
    )
    collect.add_argument("--prefix", help="topic prefix (default edgewatch)")
    collect.add_argument("--max", type=_positive_int, help="collect at most N examples")
    collect.add_argument(
        "--keep-on-device",
        action="store_true",
        help="leave the examples on the device (default: it deletes what was saved)",
    )
    collect.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="give up when the device says nothing for S seconds (default 30)",
    )
    collect.set_defaults(handler=_cmd_collect)

    demo = sub.add_parser("demo", help="the whole system on this machine")
    demo.add_argument("--port", type=int, default=1883, help="broker port (embedded if free)")
    demo.add_argument("--duration", type=float, default=None, help="stop after N seconds")
    demo.add_argument(
        "--no-watch", action="store_true", help="events as JSON lines instead of the live view"
    )
    demo.set_defaults(handler=_cmd_demo)

    bench = sub.add_parser("bench", help="raw invoke latency vs the daemon's per-frame path")
    bench.add_argument("bundle", type=Path)
    bench.add_argument("--video", type=Path, help="video to feed (default: the demo sample)")
    bench.add_argument("--threads", type=int, default=2)
    bench.add_argument("--frames", type=int, default=200, help="frames (windows for sensors)")
    bench.add_argument(
        "--audio", type=Path, help="audio bundles: a recording to feed (default: generated)"
    )
    bench.add_argument(
        "--seconds", type=float, default=60.0, help="audio bundles: generated audio length"
    )
    bench.add_argument(
        "--log", type=Path, help="log bundles: a log file to score (default: generated lines)"
    )
    bench.add_argument("--lines", type=int, default=100_000, help="log bundles: lines to score")
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(handler=_cmd_bench)

    ha = sub.add_parser("ha", help="Home Assistant discovery")
    ha_sub = ha.add_subparsers(dest="ha_command", required=True, metavar="ACTION")
    ha_remove = ha_sub.add_parser(
        "remove", help="delete the device's entities from Home Assistant (empty configs)"
    )
    ha_remove.add_argument("--config", type=Path, required=True, help="device config (TOML)")
    ha_remove.set_defaults(handler=_cmd_ha_remove)

    models = sub.add_parser("models", help="the device's model store (on the device)")
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    models_list = models_sub.add_parser("list", help="versions, the active one, history")
    models_list.add_argument("--json", action="store_true")
    models_activate = models_sub.add_parser("activate", help="make a stored version active")
    models_activate.add_argument("name", help="model name (manifest name)")
    models_activate.add_argument("version", help="version, or VERSION-SHA12 when ambiguous")
    models_rollback = models_sub.add_parser("rollback", help="go back to the previous version")
    models_rollback.add_argument("name", help="model name (manifest name)")
    for action in (models_list, models_activate, models_rollback):
        action.add_argument("--config", type=Path, required=True, help="device config (TOML)")
    for action in (models_activate, models_rollback):
        action.add_argument(
            "--wait", type=float, default=10.0, help="seconds to wait for a running daemon"
        )
    models.set_defaults(handler=_cmd_models)

    push = sub.add_parser("push", help="send a bundle to a device or a group over MQTT")
    push.add_argument("bundle", type=Path)
    target = push.add_mutually_exclusive_group(required=True)
    target.add_argument("--device", help="device id")
    target.add_argument("--group", help="every device whose retained state lists this group")
    push.add_argument("--broker", type=_broker, help="HOST:PORT (default: --config's, else "
                      "localhost:1883)")  # fmt: skip
    push.add_argument(
        "--config", type=Path, help="take broker, TLS, credentials and prefix from a device config"
    )
    push.add_argument("--prefix", help="topic prefix (default edgewatch)")
    push.add_argument("--timeout", type=float, default=120.0, help="seconds for the whole push")
    push.add_argument("--chunk-kib", type=float, default=128.0, help="chunk size in KiB")
    push.add_argument(
        "--discover", type=float, default=2.0, help="seconds to collect a group's devices"
    )
    push.add_argument("--no-progress", action="store_true", help="no progress bar")
    push.set_defaults(handler=_cmd_push)

    keys = sub.add_parser("keys", help="bundle signing keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    generate = keys_sub.add_parser("generate", help="create an Ed25519 key pair in DIR")
    generate.add_argument("dir", type=Path)
    generate.set_defaults(handler=_cmd_keys)

    train = sub.add_parser("train", help="train a model (workstation; needs the train extra)")
    train.add_argument(
        "task",
        choices=[
            "image-classification",
            "object-detection",
            "audio-classification",
            "log-anomaly",
            "sensor-anomaly",
        ],
    )
    train.add_argument("data_dir", type=Path)
    train.add_argument("--out", type=Path, required=True)
    train.add_argument(
        "--epochs", type=int, default=30, action=_ExplicitInt,
        help="most epochs (default 30; 80 for audio and object detection, where early "
        "stopping usually ends sooner)",
    )  # fmt: skip
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--input-size", type=int, default=None,
                       help="images: square input side in pixels (default 96; detection: a "
                       "multiple of 8)")  # fmt: skip
    train.add_argument("--alpha", type=float, default=None,
                       help="images: width multiplier (default 0.5; detection 1.0)")  # fmt: skip
    train.add_argument("--color", choices=["rgb", "grey"], default=None,
                       help="images: colour or grey input (default rgb)")  # fmt: skip
    train.add_argument("--batch-size", type=int, default=None,
                       help="default 32 for images, 256 for logs, 64 for audio")  # fmt: skip
    train.add_argument("--pretrained", choices=["imagenet"], default=None,
                       help="image classification: start from ImageNet weights")  # fmt: skip
    train.add_argument(
        "--blocks", type=int, default=None,
        help="image classification: separable blocks (default 10; fewer for small inputs)",
    )  # fmt: skip
    train.add_argument(
        "--patience", type=int, default=5, action=_ExplicitInt,
        help="epochs without improvement before stopping (default 5; 20 for detection, "
        "which watches validation F1)",
    )  # fmt: skip
    train.add_argument(
        "--warmup-epochs", type=int, default=None,
        help="images: epochs before early stopping watches (default 3; 5 for detection)",
    )  # fmt: skip
    train.add_argument("--name", help="model name (default: the data folder's name)")
    train.add_argument(
        "--model-version",
        help="model version (default: the UTC time, YYYYMMDD.HHMMSS, so each run differs)",
    )
    detection = train.add_argument_group("object-detection")
    detection.add_argument(
        "--labels",
        help="comma-separated classes to expect; a boxes.csv row with another class is an "
        "error (default: every class in boxes.csv)",
    )
    sensors = train.add_argument_group("sensor-anomaly")
    sensors.add_argument("--window", type=_positive_int, default=32, help="steps per window")
    sensors.add_argument("--hop", type=_positive_int, default=1, help="steps between windows")
    sensors.add_argument("--interval", type=float, help="resampling grid in s (default: median)")
    sensors.add_argument("--columns", help="value columns, comma-separated (default: all)")
    sensors.add_argument("--quantile", type=float, default=None, help="threshold quantile")
    sensors.add_argument("--margin", type=float, default=None, help="threshold margin")
    logs = train.add_argument_group("log-anomaly")
    logs.add_argument("--history", type=int, default=10, help="events looked back on (h)")
    logs.add_argument("--top-g", type=int, default=None,
                      help="anomalous outside the model's top g (default: chosen on held-out "
                      "data)")  # fmt: skip
    logs.add_argument("--min-probability", type=float, default=None,
                      help="also anomalous below this probability (default: chosen on "
                      "held-out data; 0: off)")  # fmt: skip
    logs.add_argument("--architecture", choices=["mlp", "conv", "lstm"], default="mlp")
    logs.add_argument("--format", choices=["auto", "lines", "sessions"], default="auto",
                      help="DIR/*.log lines, or DeepLog session files (normal.txt)")  # fmt: skip
    logs.add_argument("--train-fraction", type=float, default=0.1,
                      help="sessions: share of normal.txt trained on (seeded)")  # fmt: skip
    audio = train.add_argument_group("audio-classification")
    audio.add_argument(
        "--keywords",
        help="comma-separated word folders to keep as classes; other words become _unknown_ "
        "(default: every folder is a class)",
    )
    audio.add_argument("--features", choices=["mfcc", "log-mel"], default="mfcc")
    audio.add_argument(
        "--width", type=int, default=None, help="DS-CNN filters (default 128; 64: DS-CNN-S)"
    )
    audio.add_argument(
        "--ensemble", type=_positive_int, default=None, metavar="N",
        help="DS-CNNs trained side by side and averaged inside the one model (default 3; "
        "1: a single DS-CNN, a third of the compute)",
    )  # fmt: skip
    audio.add_argument(
        "--synthetic-voices", type=int, default=0, metavar="N",
        help="add every keyword spoken by N espeak-ng voice settings (and as many other "
        "words as _unknown_) to the training split; needs espeak-ng (default 0)",
    )  # fmt: skip
    audio.add_argument(
        "--val-fraction", type=_share, default=None, metavar="SHARE",
        help="share of the clips, whole speakers, that early stopping watches (default "
        "0.1; 0: none, early stopping then watches the training loss)",
    )  # fmt: skip
    audio.add_argument(
        "--test-fraction", type=_share, default=None, metavar="SHARE",
        help="share of the clips, whole speakers, held out to measure the model on "
        "(default 0.15; 0: none, for a model to ship trained on every speaker)",
    )  # fmt: skip
    train.set_defaults(handler=_cmd_train)

    convert = sub.add_parser("convert", help="Keras model folder → .ewm bundle")
    convert.add_argument("model_dir", type=Path)
    convert.add_argument(
        "--quant",
        choices=["float32", "float16", "dynamic", "int8", "edgetpu", "all"],
        required=True,
        help="quantization level; `all` writes OUT-<level>.ewm for each and a parity table",
    )
    convert.add_argument("--calibration", type=Path, help="images for int8 calibration")
    convert.add_argument("--out", type=Path, required=True)
    convert.add_argument("--sign-key", type=Path)
    convert.set_defaults(handler=_cmd_convert)

    evaluate = sub.add_parser("evaluate", help="measure a bundle on a data folder")
    evaluate.add_argument("bundle", type=Path)
    evaluate.add_argument("data_dir", type=Path)
    evaluate.add_argument("--threads", type=int, default=2)
    evaluate.add_argument("--report", type=Path, help="write report files here")
    evaluate.add_argument("--json", action="store_true")
    evaluate.add_argument(
        "--probation", type=float, default=0.0,
        help="sensor-anomaly: share of each file that only warms up (NAB uses 0.15)",
    )  # fmt: skip
    evaluate.set_defaults(handler=_cmd_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handler: Handler = args.handler
    try:
        return handler(args)
    except EdgewatchError as exc:
        sys.stderr.write(f"edgewatch: {exc}\n")
        return 2
    except ModuleNotFoundError as exc:
        missing = exc.name or "a dependency"
        extra = (
            "train" if missing.split(".")[0] in ("tensorflow", "keras", "matplotlib") else "device"
        )
        sys.stderr.write(f"edgewatch: {MissingExtraError(missing, extra)}\n")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
