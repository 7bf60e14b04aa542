"""The hard-example store, detector and recorder with real files, processes and models.

The store's bounds and crash safety are checked on disk (a writer process is killed
mid-way; files are corrupted by hand); the detector and recorder judge real results of
the session's int8 shapes model on generated frames.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from device.bundle.reader import read_bundle
from device.config import ClassificationPipeline as PipelineConfig
from device.config import ExamplesSection
from device.errors import EdgewatchError
from device.examples.detector import HardExampleDetector
from device.examples.meta import ExampleDraft, id_millis
from device.examples.recorder import ExampleRecorder
from device.examples.store import ExampleDamagedError, ExampleStore, ExampleStoreError
from device.mqtt.payloads import ModelRef
from device.pipelines.classification import ClassificationPipeline, PipelineResult
from device.runtime import load_for_manifest
from device.sources.camera import Frame
from tests.helpers_models import render_image

REPO = Path(__file__).resolve().parent.parent
MODEL = ModelRef(name="tiny-shapes", version="0.1.0", sha256="0" * 64)


def draft(**overrides: Any) -> ExampleDraft:
    fields: dict[str, Any] = {
        "kind": "image",
        "source": "desk",
        "pipeline": "shapes",
        "model": MODEL,
        "label": "circle",
        "score": 0.55,
        "threshold": 0.6,
        "reason": "low-confidence",
        "captured_at": time.time(),
        "width": 64,
        "height": 64,
    }
    return ExampleDraft.model_validate({**fields, **overrides})


def jpeg(seed: int, size: int = 64) -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    ok, buffer = cv2.imencode(".jpg", image)
    assert ok
    return buffer.tobytes()


def files_in(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


# -- store ---------------------------------------------------------------------------


def test_store_keeps_the_newest_within_its_count_bound(tmp_path: Path) -> None:
    store = ExampleStore(tmp_path / "ex", max_items=3, max_bytes=10**8)
    ids = [store.add(draft(note=f"n{i}"), jpeg(i))[0].id for i in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5  # ids increase in storing order
    assert [m.id for m in store.examples()] == ids[2:]
    stats = store.stats()
    assert stats.count == 3 and stats.evicted == 2
    assert len(files_in(store.root)) == 6  # a data file and a sidecar each
    assert store.read(ids[4]) == jpeg(4)
    with pytest.raises(ExampleStoreError):
        store.read(ids[0])
    assert [m.id for m in store.examples(after=ids[2])] == ids[3:]


def test_store_keeps_within_its_byte_bound_counting_sidecars(tmp_path: Path) -> None:
    one = len(jpeg(0))
    store = ExampleStore(tmp_path / "ex", max_items=100, max_bytes=3 * one + 200)
    for i in range(6):
        store.add(draft(), jpeg(i))
    stats = store.stats()
    # Three JPEGs would fit alone, but their sidecars count too.
    assert stats.count == 2 and stats.evicted == 4
    on_disk = sum(p.stat().st_size for p in store.root.iterdir())
    assert on_disk == stats.bytes <= stats.max_bytes
    with pytest.raises(ExampleStoreError, match="max_mb"):
        store.add(draft(), b"x" * (one * 4))
    assert store.stats().count == 2 and len(files_in(store.root)) == 4


def test_reopened_store_lists_the_same_examples_and_ids_keep_increasing(tmp_path: Path) -> None:
    store = ExampleStore(tmp_path / "ex", max_items=10, max_bytes=10**8)
    first = [store.add(draft(label=f"l{i}"), jpeg(i))[0] for i in range(3)]
    again = ExampleStore(tmp_path / "ex", max_items=10, max_bytes=10**8)
    assert again.examples() == first
    assert again.opened.kept == 3 and again.opened.corrupt_removed == 0
    newer = again.add(draft(), jpeg(9))[0]
    assert newer.id > first[-1].id
    assert id_millis(newer.id) == pytest.approx(newer.stored_at * 1000, abs=1000)
    # Reopened with a smaller bound: the oldest go at once.
    smaller = ExampleStore(tmp_path / "ex", max_items=2, max_bytes=10**8)
    assert [m.id for m in smaller.examples()] == [first[2].id, newer.id]
    assert len(files_in(smaller.root)) == 4


def test_open_removes_debris_and_lists_only_whole_examples(tmp_path: Path) -> None:
    root = tmp_path / "ex"
    store = ExampleStore(root, max_items=10, max_bytes=10**8)
    metas = [store.add(draft(), jpeg(i))[0] for i in range(6)]
    whole = {metas[0].id, metas[5].id}
    # A sidecar cut short (a crash while writing it without the rename would leave a
    # temporary file; this is worse: damage after the fact).
    sidecar = root / f"{metas[1].id}.json"
    sidecar.write_bytes(sidecar.read_bytes()[:40])
    # A data file gone.
    (root / metas[2].file_name).unlink()
    # A data file cut short: its size no longer matches the sidecar.
    data = root / metas[3].file_name
    data.write_bytes(data.read_bytes()[:100])
    # A sidecar gone: its data file is an orphan.
    (root / f"{metas[4].id}.json").unlink()
    # Unfinished writes of a killed process, and a sidecar of valid JSON but wrong shape.
    (root / ".tmp-20250101T000000000Z-aaaaaa.jpg").write_bytes(b"\xff\xd8half")
    (root / ".tmp-20250101T000000000Z-aaaaaa.json").write_bytes(b'{"id": ')
    (root / "20250101T000000000Z-bbbbbb.json").write_text('{"id": "20250101T000000000Z-bbbbbb"}')
    (root / "20250101T000000000Z-bbbbbb.jpg").write_bytes(jpeg(7))

    reopened = ExampleStore(root, max_items=10, max_bytes=10**8)
    assert {m.id for m in reopened.examples()} == whole
    assert reopened.opened.kept == 2
    assert reopened.opened.corrupt_removed == 4  # cut sidecar, missing data, cut data, bad
    assert reopened.opened.partial_removed == 6  # 2 tmp, 4 data files left without sidecar
    expected = sorted(f"{i}{ext}" for i in whole for ext in (".jpg", ".json"))
    assert files_in(root) == expected
    for example_id in whole:
        assert reopened.read(example_id)  # checksums hold
    assert reopened.stats().bytes == sum(p.stat().st_size for p in root.iterdir())


def test_read_detects_data_damaged_after_writing(tmp_path: Path) -> None:
    store = ExampleStore(tmp_path / "ex", max_items=10, max_bytes=10**8)
    meta = store.add(draft(), jpeg(1))[0]
    path = store.root / meta.file_name
    damaged = bytearray(path.read_bytes())
    damaged[200] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(damaged))
    with pytest.raises(ExampleDamagedError, match="damaged"):
        store.read(meta.id)
    assert store.examples() == [] and files_in(store.root) == []
    assert store.stats().corrupt_removed == 1


WRITER = """
import sys, os, time
from pathlib import Path
from device.examples.store import ExampleStore
from tests.test_examples_store import draft
store = ExampleStore(Path(sys.argv[1]), max_items=1000, max_bytes=10**9)
payload = os.urandom(3 * 1024 * 1024)
for i in range(1000):
    meta, _ = store.add(draft(note=str(i)), payload[i:] + payload[:i])
    print(meta.id, flush=True)
"""


def _mid_data_write(names: list[str]) -> bool:
    return any(n.startswith(".tmp-") and n.endswith(".jpg") for n in names)


def _between_data_and_sidecar(names: list[str]) -> bool:
    data = {n.removesuffix(".jpg") for n in names if n.endswith(".jpg") and n[0] != "."}
    sidecars = {n.removesuffix(".json") for n in names if n.endswith(".json") and n[0] != "."}
    return bool(data - sidecars)


@pytest.mark.parametrize("moment", [_mid_data_write, _between_data_and_sidecar])
def test_a_writer_killed_mid_way_leaves_only_whole_examples(
    tmp_path: Path, moment: Callable[[list[str]], bool]
) -> None:
    """SIGKILL a process that writes 3 MiB examples at the moment ``moment`` sees on
    disk; the reopened store lists the whole examples only, and removes the debris."""
    root = tmp_path / "ex"
    debris = 0
    for _attempt in range(5):
        process = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(root)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        written = process.stdout.readline().strip()  # one example is whole
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not moment(os.listdir(root)):
            pass
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        store = ExampleStore(root, max_items=1000, max_bytes=10**9)
        debris += store.opened.partial_removed
        ids = [m.id for m in store.examples()]
        assert written in ids
        for example_id in ids:
            assert len(store.read(example_id)) == 3 * 1024 * 1024
        names = files_in(root)
        assert not [n for n in names if n.startswith(".tmp-")]
        assert len(names) == 2 * len(ids)
        if debris:
            break
    assert debris, "the writer was never caught mid-way"


# -- detector and recorder on real model results ---------------------------------------


@dataclass(frozen=True)
class Shot:
    """A generated frame and what the model made of it."""

    image: np.ndarray[Any, np.dtype[np.uint8]]
    label: str
    score: float


@pytest.fixture(scope="module")
def pipeline(int8_bundle: Path) -> ClassificationPipeline:
    bundle = read_bundle(int8_bundle)
    runtime = load_for_manifest(bundle.manifest, bundle.model_bytes, threads=1, edgetpu="off")
    config = PipelineConfig(source="desk", model=int8_bundle, threshold=0.5)
    return ClassificationPipeline("shapes", config, bundle, runtime)


def infer(pipeline: ClassificationPipeline, image: Any, at: float) -> PipelineResult:
    return pipeline.infer(Frame("desk", 0, at, image, None, at))


@pytest.fixture(scope="module")
def shots(pipeline: ClassificationPipeline) -> dict[str, Shot]:
    """A confident frame per label (score 0.6-0.9 for the shapes: room above for a
    raised threshold), found among generated frames."""
    rng = np.random.default_rng(5)
    found: dict[str, Shot] = {}
    for _ in range(400):
        label = ("background", "circle", "square", "triangle")[len(found) % 4]
        image = render_image(rng, 32, label)
        result = infer(pipeline, image, 0.0)
        top, score = result.top_label, result.top_score
        low, high = (0.5, 1.0) if top == "background" else (0.6, 0.9)
        if top not in found and low <= score <= high:
            found[top] = Shot(image, top, score)
        if len(found) == 4:
            return found
    pytest.fail(f"no confident frame for every label among generated frames: {list(found)}")


@pytest.fixture
def fresh(pipeline: ClassificationPipeline) -> Iterator[ClassificationPipeline]:
    yield pipeline
    pipeline.reconfigure(pipeline.config.model_copy(update={"thresholds": {}}))


def test_low_confidence_is_a_reportable_top_label_just_below_its_threshold(
    fresh: ClassificationPipeline, shots: dict[str, Shot]
) -> None:
    detector = HardExampleDetector(margin=0.15, dispute_window_s=2.0, min_interval_s=0.0)
    circle = shots["circle"]

    def judge(at: float) -> str | None:
        result = infer(fresh, circle.image, at)
        verdict = detector.judge(result, fresh.thresholds, fresh.reportable)
        return None if verdict is None else verdict.reason

    assert judge(1.0) is None  # confident: at or above 0.5, and no dispute
    fresh.set_threshold("circle", circle.score + 0.05)
    assert judge(2.0) == "low-confidence"
    fresh.set_threshold("circle", circle.score + 0.2)  # further below than the margin
    assert judge(3.0) is None
    fresh.set_threshold("circle", circle.score)  # exactly at the threshold is confident
    assert judge(4.0) is None
    # A background frame is never kept, however unsure.
    fresh.set_threshold("background", shots["background"].score + 0.05)
    result = infer(fresh, shots["background"].image, 5.0)
    assert result.top_label == "background" and not result.detections
    assert detector.judge(result, fresh.thresholds, fresh.reportable) is None
    assert detector.stats().low_confidence == 1


def test_disputed_is_a_label_flip_between_close_confident_frames(
    fresh: ClassificationPipeline, shots: dict[str, Shot]
) -> None:
    detector = HardExampleDetector(margin=0.15, dispute_window_s=2.0, min_interval_s=0.0)

    def judge(label: str, at: float) -> tuple[str | None, str | None]:
        result = infer(fresh, shots[label].image, at)
        assert result.top_label == label
        verdict = detector.judge(result, fresh.thresholds, fresh.reportable)
        return (None, None) if verdict is None else (verdict.reason, verdict.note)

    assert judge("circle", 10.0) == (None, None)
    assert judge("circle", 10.2) == (None, None)  # same label: no dispute
    reason, note = judge("square", 10.7)
    assert reason == "disputed" and note is not None and "'circle'" in note and "0.50 s" in note
    # A confident background frame in between does not reset it: background never
    # counts as confident, so square -> background -> triangle is still a flip.
    assert judge("background", 11.0) == (None, None)
    assert judge("triangle", 11.5)[0] == "disputed"
    # Too far apart to be a dispute: a different thing came into view.
    assert judge("circle", 20.0) == (None, None)
    assert detector.stats().disputed == 2


def test_automatic_keeping_is_rate_limited_per_pipeline(
    fresh: ClassificationPipeline, shots: dict[str, Shot]
) -> None:
    detector = HardExampleDetector(margin=0.15, dispute_window_s=2.0, min_interval_s=10.0)
    fresh.set_threshold("circle", shots["circle"].score + 0.05)
    kept = [
        detector.judge(infer(fresh, shots["circle"].image, at), fresh.thresholds, fresh.reportable)
        is not None
        for at in (100.0, 101.0, 109.0, 110.5, 111.0)
    ]
    assert kept == [True, False, False, True, False]
    stats = detector.stats()
    assert stats.low_confidence == 5 and stats.rate_limited == 3


def test_recorder_drops_when_its_writer_is_behind_and_writes_whole_examples(
    fresh: ClassificationPipeline, shots: dict[str, Shot], tmp_path: Path
) -> None:
    store = ExampleStore(tmp_path / "ex", max_items=100, max_bytes=10**8)
    config = ExamplesSection(min_interval_s=0.0, queue_size=2, max_width=48)
    recorder = ExampleRecorder(store, config)
    # The writer is not started yet, so the queue fills: inference must not wait.
    labels = ["circle", "square", "circle", "square", "circle"]
    started = time.perf_counter()
    for index, label in enumerate(labels):
        infer(fresh, shots[label].image, 50.0 + index * 0.5)
        recorder.observe(fresh, MODEL, shots[label].image)
    assert time.perf_counter() - started < 1.0
    # The first circle is not a dispute; the four flips are; two fit in the queue.
    assert recorder.stats().dropped == 2
    recorder.start()
    recorder.close()
    stats = recorder.stats()
    assert stats.kept == 2 and stats.failed == 0 and stats.detector.disputed == 4
    metas = store.examples()
    assert [m.reason for m in metas] == ["disputed", "disputed"]
    assert [m.label for m in metas] == ["square", "circle"]
    for meta in metas:
        assert meta.pipeline == "shapes" and meta.source == "desk" and meta.model == MODEL
        assert meta.threshold == pytest.approx(0.5)
        assert meta.width == 48 and meta.height == 48  # the 64 px frame, scaled down
        image = cv2.imdecode(np.frombuffer(store.read(meta.id), np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape == (48, 48, 3)
    # `keep` writes the pipeline's last frame with the prediction made for it.
    last = recorder.latest("shapes")
    assert last is not None
    kept = recorder.write(last, "command", "by hand")
    assert kept.reason == "command" and kept.note == "by hand" and kept.label == "circle"


def test_an_example_that_cannot_be_written_is_counted_not_raised(
    fresh: ClassificationPipeline, shots: dict[str, Shot], tmp_path: Path
) -> None:
    store = ExampleStore(tmp_path / "ex", max_items=100, max_bytes=10**8)
    recorder = ExampleRecorder(store, ExamplesSection(min_interval_s=0.0))
    recorder.start()
    # The folder vanishes and a file takes its place: every write fails (even as root).
    shutil.rmtree(store.root)
    store.root.write_text("not a folder")
    for index, label in enumerate(["circle", "square"]):
        infer(fresh, shots[label].image, 70.0 + index)
        recorder.observe(fresh, MODEL, shots[label].image)
    recorder.close()
    stats = recorder.stats()
    assert stats.failed == 1 and stats.kept == 0 and stats.detector.disputed == 1
    latest = recorder.latest("shapes")
    assert latest is not None
    with pytest.raises(EdgewatchError, match="cannot write example"):
        recorder.write(latest, "command", None)
    assert store.examples() == []
