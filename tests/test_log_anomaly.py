"""Log anomaly detection end to end: generated logs → training → int8 bundle → pipeline.

The shop application of ``training.synthetic.logs`` is trained on normal logs, converted
to int8 and run through the device's ``LogAnomalyPipeline`` on a log file read by the
device's own ``FileFollower``, with anomalies injected on known lines (new templates,
skipped steps, steps out of order, a duplicate, a parameter a thousand times too big).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from converters.convert import convert_model
from converters.model_dir import read_info
from converters.sequence_samples import read_windows
from device.bundle.manifest import LogPreprocessing, Manifest, NextEventDecoding
from device.bundle.reader import Bundle, read_bundle
from device.cli import main
from device.errors import BundleIncompatibleError, BundleTaskError, DatasetError
from device.logs.record import LogLine, LogMeta
from device.logs.tail import FileFollower, TailOptions
from device.pipelines.log_anomaly import LogAnomalyPipeline, LogScore, check_log_bundle
from device.pipelines.log_config import LogAnomalyPipelineConfig
from device.pipelines.log_events import BLANK, UNKNOWN, EventMapper, stream_windows
from device.runtime import load_for_manifest
from training.datasets.log_labels import read_labels
from training.datasets.log_lines import line_ids, load_log_folder
from training.evaluate_logs import evaluate_log_bundle
from training.synthetic.logs import (
    ANOMALY_KINDS,
    NORMAL_TEMPLATES,
    GeneratedLog,
    write_log_folder,
    write_session_folder,
)
from training.train_logs import LogTrainOptions, LogTrainResult, train_log_anomaly

pytestmark = pytest.mark.slow

HISTORY = 6
OPTIONS = LogTrainOptions(epochs=15, history=HISTORY, seed=0, progress=False, name="shop")


class Shop:
    """The trained shop model, its int8 bundle and a labelled evaluation folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        write_log_folder(root / "train", files=2, lines=3000, seed=1)
        self.eval: dict[str, GeneratedLog] = write_log_folder(
            root / "eval", files=1, lines=3000, seed=2, anomalies=30
        )
        self.trained: LogTrainResult = train_log_anomaly(root / "train", root / "model", OPTIONS)
        self.bundle_path = convert_model(root / "model", "int8", root / "shop.ewm", threads=1).out
        self.bundle: Bundle = read_bundle(self.bundle_path)

    def pipeline(self, **overrides: object) -> LogAnomalyPipeline:
        config = LogAnomalyPipelineConfig.model_validate(
            {"source": "app", "model": self.bundle_path, "max_reports_per_s": 0.0, **overrides}
        )
        manifest = self.bundle.manifest
        runtime = load_for_manifest(manifest, self.bundle.model_bytes, 1, "off")
        return LogAnomalyPipeline("shop", config, self.bundle, runtime)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Shop:
    return Shop(tmp_path_factory.mktemp("shop"))


def follow(path: Path) -> list[LogLine]:
    """Every line of ``path`` as the daemon's file source reads it."""
    follower = FileFollower("app", [path], None, TailOptions(start_at="beginning"))
    lines: list[LogLine] = []
    try:
        while batch := follower.poll():
            lines += batch
    finally:
        follower.close()
    return lines


def score_file(pipeline: LogAnomalyPipeline, path: Path, batch: int = 500) -> list[LogScore]:
    lines = follow(path)
    verdicts: list[LogScore] = []
    for start in range(0, len(lines), batch):
        verdicts += pipeline.process_batch(lines[start : start + batch])
    return verdicts


def test_generated_logs_mine_to_the_designed_templates(shop: Shop) -> None:
    spec = shop.bundle.manifest.preprocessing
    assert isinstance(spec, LogPreprocessing) and spec.vocabulary is not None
    assert len(spec.vocabulary.templates) == NORMAL_TEMPLATES == shop.trained.templates


def test_injected_anomalies_are_found_and_normal_stretches_stay_quiet(shop: Shop) -> None:
    generated = shop.eval["app-1.log"]
    verdicts = score_file(shop.pipeline(), shop.root / "eval" / "app-1.log")
    assert len(verdicts) == len(generated.lines)
    flagged = {i for i, v in enumerate(verdicts) if v.anomalous}

    found = Counter(a.kind for a in generated.anomalies if a.line in flagged)
    injected = Counter(a.kind for a in generated.anomalies)
    assert sum(found.values()) >= 0.9 * len(generated.anomalies), (found, injected)
    for kind in ANOMALY_KINDS:
        assert found[kind] >= injected[kind] - 1, (kind, found, injected)
    # New templates are unknown, always; a parameter out of range says so.
    for anomaly in generated.anomalies:
        reason = verdicts[anomaly.line].reason
        if anomaly.kind == "new-template":
            assert reason == "unknown-template"
        if anomaly.kind == "parameter":
            assert reason == "parameter"
            issue = verdicts[anomaly.line].parameter
            assert issue is not None and issue.value > 100 * issue.high

    # Normal stretches: lines more than a history away from any anomaly.
    near = {a.line + d for a in generated.anomalies for d in range(HISTORY + 1)}
    quiet = [i for i in range(len(verdicts)) if i not in near]
    false_alarms = [i for i in quiet if i in flagged]
    assert len(false_alarms) <= 0.005 * len(quiet), [verdicts[i].text for i in false_alarms]


def test_a_verdict_carries_what_an_event_needs(shop: Shop) -> None:
    generated = shop.eval["app-1.log"]
    verdicts = score_file(shop.pipeline(), shop.root / "eval" / "app-1.log")
    skipped = next(a for a in generated.anomalies if a.kind == "skipped-step")
    verdict = verdicts[skipped.line]
    assert verdict.anomalous and verdict.report
    assert verdict.reason in ("unexpected-event", "improbable-event")
    assert verdict.text == generated.lines[skipped.line]
    assert verdict.template is not None and "completed" in verdict.template
    assert verdict.rank is not None and verdict.rank >= 1
    assert verdict.surprise is not None and verdict.surprise > 0
    assert 0.0 <= verdict.score <= 1.0
    # What the model expected after "received": the auth step.
    expected = [shop.pipeline().template_text(t) or "" for t in verdict.expected]
    assert any("auth" in text for text in expected), expected
    normal = next(v for v in verdicts if v.reason == "normal")
    assert not normal.anomalous and not normal.report and normal.rank is not None


def test_training_and_device_compute_the_same_template_ids(shop: Shop) -> None:
    info = read_info(shop.root / "model")
    assert isinstance(info.preprocessing, LogPreprocessing)
    assert info.preprocessing == shop.bundle.manifest.preprocessing
    training_mapper = EventMapper(info.preprocessing)
    for f in load_log_folder(shop.root / "train"):
        training_ids = line_ids(training_mapper, f.lines)
        pipeline = shop.pipeline()
        verdicts = score_file(pipeline, f.path)
        device_ids = np.array([v.template_id for v in verdicts])
        assert np.array_equal(training_ids, device_ids)
        assert not np.any(training_ids == UNKNOWN)
        # The device scores exactly the windows training learnt from.
        _, y = stream_windows(training_ids.tolist(), HISTORY)
        scored = [v for v in verdicts if v.rank is not None]
        assert len(scored) == len(y)
        assert [v.template_id for v in scored] == y.tolist()
    heldout = read_windows(shop.root / "model" / "heldout.npz", HISTORY,
                           info.preprocessing.classes)  # fmt: skip
    assert heldout.y is not None and len(heldout) > 0


def test_batches_and_single_lines_give_the_same_verdicts(shop: Shop) -> None:
    lines = follow(shop.root / "eval" / "app-1.log")[:600]
    batched = shop.pipeline().process_batch(lines)
    single_pipeline = shop.pipeline(batch_size=1, cache_entries=0)
    single = [single_pipeline.process(line) for line in lines]

    def key(v: LogScore) -> tuple[object, ...]:
        return (v.template_id, v.reason, v.rank, v.expected, v.anomalous)

    assert [key(v) for v in batched] == [key(v) for v in single]
    for a, b in zip(batched, single, strict=True):
        if a.probability is not None:
            assert a.probability == pytest.approx(b.probability, rel=1e-5)


def test_each_origin_keeps_its_own_history(shop: Shop) -> None:
    lines = follow(shop.root / "eval" / "app-1.log")[:400]
    alone = [v.reason for v in shop.pipeline().process_batch(lines)]
    other = [LogLine("app", "other.log", line.text, 0.0) for line in lines]
    mixed = [x for pair in zip(lines, other, strict=True) for x in pair]
    verdicts = shop.pipeline().process_batch(mixed)
    assert [v.reason for v in verdicts[0::2]] == alone
    assert [v.reason for v in verdicts[1::2]] == alone
    # One syslog peer, two programs: "app" keeps them apart, "origin" does not.
    peer = "udp:10.0.0.1:514"
    tagged = [
        LogLine("app", peer, line.text, 0.0, meta=LogMeta(format="rfc3164", app=name))
        for line in lines
        for name in ("shop", "other")
    ]
    by_app = shop.pipeline(history_key="app").process_batch(tagged)
    assert [v.reason for v in by_app[0::2]] == alone
    by_peer = shop.pipeline().process_batch(tagged)
    assert [v.reason for v in by_peer[0::2]] != alone


def test_unknown_templates_stay_anomalous_whatever_the_config(shop: Shop) -> None:
    spec = shop.bundle.manifest.preprocessing
    assert isinstance(spec, LogPreprocessing)
    pipeline = shop.pipeline(top_g=spec.classes, min_probability=0.0, parameter_checks=False)
    generated = shop.eval["app-1.log"]
    verdicts = score_file(pipeline, shop.root / "eval" / "app-1.log")
    reasons = Counter(v.reason for v in verdicts)
    assert set(reasons) <= {"normal", "warming-up", "unknown-template"}
    new = [a.line for a in generated.anomalies if a.kind == "new-template"]
    assert new and all(verdicts[i].reason == "unknown-template" for i in new)
    pipeline.set_limits(top_g=1)
    assert pipeline.top_g == 1
    pipeline.set_limits()
    assert pipeline.top_g == shop.trained.top_g
    blank = pipeline.process(LogLine("app", "x", "   ", 0.0))
    assert blank.template_id == BLANK and not blank.anomalous and blank.reason == "blank"


def test_reports_are_rate_limited_and_counted(shop: Shop) -> None:
    class Clock:
        now = 0.0

        def monotonic(self) -> float:
            return self.now

    clock = Clock()
    manifest = shop.bundle.manifest
    runtime = load_for_manifest(manifest, shop.bundle.model_bytes, 1, "off")
    config = LogAnomalyPipelineConfig(source="app", model=shop.bundle_path,
                                      max_reports_per_s=1.0, report_burst=3)  # fmt: skip
    pipeline = LogAnomalyPipeline("shop", config, shop.bundle, runtime, clock=clock)
    junk = [LogLine("app", "a", f"kernel panic number {i} at CPU{i}", 0.0) for i in range(10)]
    verdicts = pipeline.process_batch(junk)
    assert all(v.anomalous for v in verdicts)
    assert sum(v.report for v in verdicts) == 3
    clock.now = 2.0
    assert sum(v.report for v in pipeline.process_batch(junk[:5])) == 2
    stats = pipeline.stats()
    assert (stats.anomalies, stats.reported, stats.suppressed, stats.unknown) == (15, 5, 10, 15)


def test_the_int8_bundle_states_the_model(shop: Shop) -> None:
    manifest: Manifest = shop.bundle.manifest
    spec, decoding = manifest.preprocessing, manifest.decoding
    assert isinstance(spec, LogPreprocessing) and isinstance(decoding, NextEventDecoding)
    assert manifest.task == "log-anomaly" and manifest.quantization == "int8"
    assert manifest.inputs[0].shape == (1, HISTORY) and manifest.inputs[0].dtype == "int32"
    assert manifest.outputs[0].shape == (1, spec.classes)
    assert manifest.outputs[0].dtype == "int8" and manifest.outputs[0].quantized
    assert manifest.labels == spec.class_labels() and manifest.labels[0] == "unknown"
    assert manifest.labels[-1] == "boundary" and spec.classes == NORMAL_TEMPLATES + 2
    assert decoding.top_g == shop.trained.top_g and decoding.parameter_ranges
    parity = json.loads((shop.root / "shop.parity.json").read_text())
    assert parity["decision_agreement"] >= 0.99
    check_log_bundle(shop.bundle, "shop")


def test_evaluate_reads_labels_csv(shop: Shop, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                   ) -> None:  # fmt: skip
    result = evaluate_log_bundle(shop.bundle_path, shop.root / "eval", out_dir=tmp_path / "r")
    assert result.level == "lines"
    assert result.metrics.tp + result.metrics.fn == 30
    assert result.metrics.recall >= 0.9 and result.metrics.precision >= 0.6
    assert (tmp_path / "r" / "report.json").is_file()
    rows = (tmp_path / "r" / "anomalies.csv").read_text().splitlines()
    assert len(rows) == 1 + result.metrics.tp + result.metrics.fp + result.metrics.fn

    assert main(["evaluate", str(shop.bundle_path), str(shop.root / "eval"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["f1"] == pytest.approx(result.metrics.f1)


def test_bench_reports_lines_per_second(shop: Shop, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", str(shop.bundle_path), "--lines", "3000", "--threads", "1",
                 "--json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["lines"] == 3000 and result["generated"]
    assert result["end_to_end_lines_per_s"] > 0 and result["template_lines_per_s"] > 0
    assert result["anomalies"] <= 30  # generated from the model's own normal behaviour


def test_an_image_bundle_is_refused(shop: Shop) -> None:
    demo = Path(__file__).resolve().parents[1] / "deploy" / "demo" / "models" / "shapes.ewm"
    image = read_bundle(demo)
    runtime = load_for_manifest(image.manifest, image.model_bytes, 1, "off")
    config = LogAnomalyPipelineConfig(source="app", model=demo)
    with pytest.raises(BundleTaskError):
        LogAnomalyPipeline("x", config, image, runtime)
    with pytest.raises(BundleTaskError):
        check_log_bundle(image, "x")


# -- sessions ----------------------------------------------------------------------------


def test_sessions_train_and_evaluate(tmp_path: Path) -> None:
    data = tmp_path / "sessions"
    write_session_folder(data, normal=400, abnormal=80, seed=3)
    options = LogTrainOptions(epochs=20, history=4, seed=0, train_fraction=0.5,
                              progress=False, name="blocks")  # fmt: skip
    trained = train_log_anomaly(data, tmp_path / "model", options)
    assert trained.input_format == "sessions" and trained.templates == 12
    bundle = convert_model(tmp_path / "model", "int8", tmp_path / "blocks.ewm", threads=1).out
    result = evaluate_log_bundle(bundle, data)
    assert result.level == "sessions"
    assert result.excluded_training_sessions == 200
    assert result.metrics.tp + result.metrics.fn == 80
    assert result.metrics.fp + result.metrics.tn == 200
    assert result.metrics.recall >= 0.95 and result.metrics.false_positive_rate <= 0.02
    with pytest.raises(BundleIncompatibleError):
        check_log_bundle(read_bundle(bundle), "x")
    with pytest.raises(DatasetError, match="sessions"):
        evaluate_log_bundle(bundle, tmp_path)  # not a session folder


# -- the command line and bad input ------------------------------------------------------


def test_cli_trains_and_converts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_log_folder(tmp_path / "logs", files=1, lines=800, seed=4)
    out = tmp_path / "model"
    assert main(["train", "log-anomaly", str(tmp_path / "logs"), "--out", str(out),
                 "--epochs", "2", "--history", "4", "--top-g", "5"]) == 0  # fmt: skip
    assert "model folder" in capsys.readouterr().out
    assert (out / "report" / "training_curves.png").is_file()
    info = read_info(out)
    assert isinstance(info.decoding, NextEventDecoding) and info.decoding.top_g == 5
    bundle = tmp_path / "logs.ewm"
    assert main(["convert", str(out), "--quant", "int8", "--out", str(bundle),
                 "--calibration", str(tmp_path / "logs")]) == 0  # fmt: skip
    manifest = read_bundle(bundle).manifest
    assert manifest.task == "log-anomaly"
    assert manifest.provenance["calibration"] == "logs"


def test_training_refuses_bad_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "log-anomaly", str(empty), "--out", str(tmp_path / "m")]) == 2
    assert "no *.log files" in capsys.readouterr().err

    (empty / "a.log").write_text("\n\n")
    with pytest.raises(DatasetError, match="no log lines"):
        train_log_anomaly(empty, tmp_path / "m", OPTIONS)

    binary = tmp_path / "binary"
    binary.mkdir()
    (binary / "ok.log").write_text("hello world\n" * 50)
    (binary / "core.log").write_bytes(bytes(range(256)) * 64)
    with pytest.raises(DatasetError, match=r"core\.log looks like a binary file"):
        train_log_anomaly(binary, tmp_path / "m", OPTIONS)

    short = tmp_path / "short"
    short.mkdir()
    (short / "a.log").write_text("one line\nanother line\n")
    with pytest.raises(DatasetError, match="no training example"):
        train_log_anomaly(short, tmp_path / "m", OPTIONS)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("file,line,label\nmissing.log,3,1\n", "row 2: file 'missing.log' is not"),
        ("a.log,9,1\n", "row 1: a.log has 4 lines, so line 9 does not exist"),
        ("a.log,0,1\n", "row 1: line must be a line number from 1"),
        ("a.log,2,maybe\n", "row 1: label 'maybe' is neither"),
        ("a.log,2\n", "row 1: expected file,line,label"),
        ("a.log,2,1\na.log,2,normal\n", "row 2: a.log line 2 is labelled both ways"),
    ],
)
def test_labels_csv_errors_name_the_row(tmp_path: Path, rows: str, message: str) -> None:
    (tmp_path / "labels.csv").write_text(rows)
    with pytest.raises(DatasetError, match=message):
        read_labels(tmp_path / "labels.csv", {"a.log": 4})


def test_labels_csv_lists_anomalies_and_the_rest_is_normal(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("file,line,label\na.log,2,anomaly\na.log,3,-\n")
    labels = read_labels(tmp_path / "labels.csv", {"a.log": 4, "b.log": 2})
    assert labels["a.log"].tolist() == [False, True, False, False]
    assert labels["b.log"].tolist() == [False, False]


def test_evaluate_refuses_a_folder_without_labels(shop: Shop, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.log").write_text("hello\n")
    assert main(["evaluate", str(shop.bundle_path), str(tmp_path)]) == 2
    assert "labels.csv" in capsys.readouterr().err


def test_training_is_seeded_and_deterministic(tmp_path: Path) -> None:
    write_log_folder(tmp_path / "logs", files=1, lines=800, seed=4)
    options = LogTrainOptions(epochs=2, history=4, seed=3, progress=False)
    first = train_log_anomaly(tmp_path / "logs", tmp_path / "a", options)
    second = train_log_anomaly(tmp_path / "logs", tmp_path / "b", options)
    assert (first.top_g, first.min_probability) == (second.top_g, second.min_probability)
    from training.tf_setup import import_keras

    keras = import_keras()
    weights = [keras.models.load_model(d / "model.keras").get_weights() for d in
               (first.out_dir, second.out_dir)]  # fmt: skip
    assert all(np.array_equal(a, b) for a, b in zip(*weights, strict=True))
    for name in ("model_info.json", "heldout.npz", "calibration.npz"):
        assert (first.out_dir / name).read_bytes() == (second.out_dir / name).read_bytes()
