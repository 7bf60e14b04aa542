"""The face example, end to end: a face detector, then who it is.

``make face-example ORL_DIR=...`` (or ``python -m training.recipes.faces --orl DIR
--out DIR``) builds everything a device needs to say "s12 is at the door":

1. the identity split of the ORL folder (training/datasets/face_identity.py): per
   person, ``holdout`` pictures set aside, the rest plus crops cut as the device cuts;
2. face scenes (training/synthetic/face_scenes.py) from the training pictures, for the
   detector, and test scenes from the held-out ones;
3. ``edgewatch train object-detection`` on the scenes, ``edgewatch convert --quant
   int8``: the face detector bundle;
4. crops of the faces the trained detector finds in the training scenes, cut from its
   own boxes, added to the identity folder; then ``edgewatch train
   image-classification`` on that folder (grey, 64 px, the settings docs/real-data.md
   measured on ORL), ``convert --quant int8``: the identity bundle;
5. checks: the identity bundle through the device's own ``CropClassifier`` on the test
   scenes' true face boxes; both bundles chained as the device chains them (detector
   on the scene, identity on its boxes' crops) on the same scenes; and ``edgewatch
   evaluate`` of the detector on the test scenes;
6. ``faces.toml``: a device config with a camera, the detection pipeline ``faces`` and
   the chained pipeline ``who`` (deploy/examples/faces.toml is this file with a Pi's
   paths).

Training and conversion run the ``edgewatch`` CLI as subprocesses, exactly the
commands a user would type, so the recipe depends on their command lines only. A step
whose output is already there (a finished model folder, a bundle) is reused; ``--fresh``
starts over.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import tomllib

from converters.detection_metrics import ImageMatch, TruthBox, match_image
from converters.model_dir import INFO_FILE
from device.bundle.reader import read_bundle
from device.config import RuntimeSection
from device.detection.crops import CropSettings, crop
from device.detection.detector import Detector
from device.detection.objects import DetectedObject, NormBox
from device.errors import DatasetError, EdgewatchError
from device.pipelines.chain_config import ChainedClassificationConfig
from device.pipelines.chained import CropClassifier
from device.pipelines.loaded import load_model
from training.datasets.face_identity import write_identity_folder
from training.synthetic.face_scenes import (
    BOXES_FILE,
    IMAGES_DIR,
    FaceBox,
    SceneOptions,
    read_identities,
    write_face_scenes,
)
from training.synthetic.face_sprites import ORL_ASPECT, OrlFaces

log = logging.getLogger(__name__)

DETECTOR_NAME = "faces-detector"
IDENTITY_NAME = "orl-identity"
#: What the chained pipeline and the identity crops share.
MARGIN = 0.1
MIN_SIZE = 24
IDENTITY_THRESHOLD = 0.6
DETECTOR_THRESHOLD = 0.5
#: The one label detections and true faces share while they are matched.
_ANY = "object"
#: Where install-pi.sh puts bundles; deploy/examples/faces.toml points there.
PI_MODELS = Path("/var/lib/edgewatch/models")


@dataclass(frozen=True)
class FaceExampleOptions:
    orl_dir: Path
    out_dir: Path
    #: Detector training scenes, and test scenes of held-out faces.
    scenes: int = 1500
    test_scenes: int = 200
    scene_size: tuple[int, int] = (320, 240)
    detector_epochs: int = 60
    #: Extra arguments for `edgewatch train object-detection` (input size, ...).
    detector_args: tuple[str, ...] = ()
    identity_epochs: int = 150
    identity_patience: int = 30
    #: ORL pictures held out per person (7 per person: 6 left to train on).
    holdout: int = 1
    #: Crops written per training picture, besides the picture itself.
    variants: int = 3
    #: Crops of the trained detector's own boxes per person, from the training scenes,
    #: added to the identity training folder (0: none).
    detector_crops: int = 12
    seed: int = 0
    python: str = field(default_factory=lambda: sys.executable)

    def crop_settings(self) -> CropSettings:
        return CropSettings(margin=MARGIN, aspect=ORL_ASPECT, min_size=MIN_SIZE)


@dataclass(frozen=True)
class IdentityCheck:
    """The identity bundle on the test scenes' true face boxes."""

    faces: int
    correct: int
    reported: int
    skipped_small: int
    ms_per_crop_p50: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.faces if self.faces else 0.0


@dataclass(frozen=True)
class ChainCheck:
    """The two bundles chained as the device runs them, on the test scenes: the
    detector on each whole scene, the identity model on the crops of what it found.

    A true face is *found* when a detection's centre lies in its box (each detection
    matches one face at most, the most confident first); a found face is then named
    right, named wrong, or not named (under the identity threshold, too small to crop,
    or beyond the crop limit: the device would report nobody known).
    """

    images: int
    faces: int
    found: int
    named_right: int
    named_wrong: int
    unnamed: int
    #: Detections that matched no face and were named anyway: "who" events for nobody.
    false_named: int

    @property
    def accuracy(self) -> float:
        """True faces named right, of all true faces: what "who" gets right end to end."""
        return self.named_right / self.faces if self.faces else 0.0


@dataclass(frozen=True)
class FaceExampleResult:
    detector_bundle: Path
    identity_bundle: Path
    config: Path
    identity_check: IdentityCheck
    chain_check: ChainCheck
    #: `edgewatch evaluate --json` of the detector on the test scenes; None when the
    #: command failed (the log says why).
    detector_evaluation: dict[str, object] | None
    seconds: float


def _run(step: str, command: Sequence[str]) -> None:
    log.info("%s: %s", step, " ".join(command))
    completed = subprocess.run(list(command), check=False)
    if completed.returncode != 0:
        raise EdgewatchError(
            f"face example: {step} failed (exit {completed.returncode}); the command was: "
            f"{' '.join(command)}"
        )


def _cli(options: FaceExampleOptions, *args: str | Path) -> list[str]:
    return [options.python, "-m", "device.cli", *(str(a) for a in args)]


def _train_and_convert(
    options: FaceExampleOptions, step: str, train_args: Sequence[str | Path], model_dir: Path,
    bundle: Path,
) -> None:  # fmt: skip
    if (model_dir / INFO_FILE).is_file():
        log.info("%s: reusing %s", step, model_dir)
    else:
        shutil.rmtree(model_dir, ignore_errors=True)
        _run(f"training the {step}", _cli(options, "train", *train_args, "--out", model_dir))
    if bundle.is_file():
        log.info("%s: reusing %s", step, bundle)
        return
    bundle.parent.mkdir(parents=True, exist_ok=True)
    _run(
        f"converting the {step}",
        _cli(options, "convert", model_dir, "--quant", "int8", "--out", bundle),
    )


def _identity_classifier(
    bundle_path: Path, settings: CropSettings, threshold: float, input_labels: tuple[str, ...]
) -> CropClassifier:
    """The identity bundle as the ``who`` pipeline runs it, loaded the way serving does."""
    bundle = read_bundle(bundle_path)
    config = ChainedClassificationConfig(
        input="faces", input_labels=input_labels, model=bundle_path, margin=settings.margin,
        aspect=settings.aspect, min_size=settings.min_size, threshold=threshold,
    )  # fmt: skip
    loaded = load_model("who", "camera", "image-classification", bundle, RuntimeSection())
    return CropClassifier("who", config, bundle, loaded.runtime)


def check_identity(
    bundle_path: Path, scenes_dir: Path, settings: CropSettings, threshold: float
) -> IdentityCheck:
    """Run the identity bundle through ``CropClassifier`` on every true face box."""
    classifier = _identity_classifier(bundle_path, settings, threshold, ("face",))
    faces = correct = 0
    for name, boxes in sorted(read_identities(scenes_dir).items()):
        frame = cv2.imread(str(scenes_dir / IMAGES_DIR / name), cv2.IMREAD_COLOR)
        if frame is None:
            raise DatasetError(f"{scenes_dir / IMAGES_DIR / name} is not a readable image")
        height, width = frame.shape[:2]
        truth = {}
        objects = []
        for box in boxes:
            obj = DetectedObject(
                "face",
                1.0,
                NormBox(box.x0 / width, box.y0 / height, box.x1 / width, box.y1 / height),
                box_is_estimate=False,
            )
            truth[id(obj)] = box.identity
            objects.append(obj)
        for result in classifier.classify(np.asarray(frame, dtype=np.uint8), objects):
            faces += 1
            correct += result.top_label == truth[id(result.object)]
    stats = classifier.stats()
    return IdentityCheck(
        faces=faces + stats.skipped_small,
        correct=correct,
        reported=stats.reported,
        skipped_small=stats.skipped_small,
        ms_per_crop_p50=stats.latency.p50_ms,
    )


@dataclass(frozen=True)
class _MatchedScene:
    """One scene image, what the detector found in it, and how that matched its faces."""

    name: str
    frame: np.ndarray[Any, np.dtype[np.uint8]]
    #: Detections of the cropped labels, the most confident first.
    objects: list[DetectedObject]
    faces: list[FaceBox]
    match: ImageMatch


def _matched_scenes(
    detector_path: Path, scenes_dir: Path, input_labels: tuple[str, ...], threshold: float
) -> Iterator[_MatchedScene]:
    """The detector on every image of a scene folder, matched to ``identities.csv`` as
    ``edgewatch evaluate`` matches (centroid in box, one to one, the most confident
    first), whatever the detected label among ``input_labels``."""
    detector = Detector.load(read_bundle(detector_path), edgetpu="off", threshold=threshold)
    truth = read_identities(scenes_dir)
    for path in sorted(p for p in (scenes_dir / IMAGES_DIR).iterdir() if p.is_file()):
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise DatasetError(f"{path} is not a readable image")
        height, width = frame.shape[:2]
        faces = truth.get(path.name, [])
        found = sorted(detector.detect(frame).objects, key=lambda o: o.score, reverse=True)
        objects = [o for o in found if o.label in input_labels]
        match = match_image(
            [replace(o, label=_ANY) for o in objects],
            [TruthBox(_ANY, NormBox(b.x0 / width, b.y0 / height, b.x1 / width, b.y1 / height))
             for b in faces],
        )  # fmt: skip
        yield _MatchedScene(path.name, np.asarray(frame, dtype=np.uint8), objects, faces, match)


def check_chain(
    detector_path: Path,
    identity_path: Path,
    scenes_dir: Path,
    settings: CropSettings,
    *,
    identity_threshold: float,
    detector_threshold: float = DETECTOR_THRESHOLD,
    input_labels: tuple[str, ...] = ("face",),
) -> ChainCheck:
    """Run the detector and the identity model as the ``faces`` → ``who`` pipelines do
    on every image of a scene folder, and count against its ``identities.csv``."""
    classifier = _identity_classifier(identity_path, settings, identity_threshold, input_labels)
    images = faces = found = right = wrong = unnamed = false_named = 0
    for scene in _matched_scenes(detector_path, scenes_dir, input_labels, detector_threshold):
        images += 1
        faces += len(scene.faces)
        verdicts = {id(r.object): r.label for r in classifier.classify(scene.frame, scene.objects)}
        for index in scene.match.false_positives:
            false_named += verdicts.get(id(scene.objects[index])) is not None
        for index, face in scene.match.pairs:
            found += 1
            named = verdicts.get(id(scene.objects[index]))
            if named is None:
                unnamed += 1
            elif named == scene.faces[face].identity:
                right += 1
            else:
                wrong += 1
    return ChainCheck(images, faces, found, right, wrong, unnamed, false_named)


def write_detector_crops(
    detector_path: Path,
    scenes_dir: Path,
    train_dir: Path,
    settings: CropSettings,
    *,
    per_identity: int,
    detector_threshold: float = DETECTOR_THRESHOLD,
    input_labels: tuple[str, ...] = ("face",),
) -> int:
    """Crops of the faces the trained detector finds in training scenes, cut from *its*
    boxes with the chained pipeline's settings, written as
    ``train_dir/<identity>/det_<scene>_<n>.png`` (at most ``per_identity`` each).

    A centroid detector's boxes are estimates (in one run on the face scenes, the middle
    80 % of their widths lay between 0.7 and 1.9 times the true width): an identity
    model that only saw crops of true boxes, jittered a little, misnames many of the
    faces the detector hands it. These crops show it what the device will cut. Returns
    the number written.
    """
    counts: dict[str, int] = {}
    written = 0
    for scene in _matched_scenes(detector_path, scenes_dir, input_labels, detector_threshold):
        for index, face in scene.match.pairs:
            identity = scene.faces[face].identity
            if counts.get(identity, 0) >= per_identity:
                continue
            cut = crop(scene.frame, scene.objects[index].box, settings)
            if cut is None:
                continue
            target = train_dir / identity
            target.mkdir(parents=True, exist_ok=True)
            out = target / f"det_{Path(scene.name).stem}_{face}.png"
            if not cv2.imwrite(str(out), cut.image):
                raise OSError(f"could not write {out}")
            counts[identity] = counts.get(identity, 0) + 1
            written += 1
    log.info(
        "%d crops of the detector's boxes written to %s (%d identities)",
        written, train_dir, len(counts),
    )  # fmt: skip
    return written


def _evaluate_detector(
    options: FaceExampleOptions, bundle: Path, scenes: Path
) -> dict[str, object] | None:
    command = _cli(options, "evaluate", bundle, scenes, "--json")
    log.info("evaluating the face detector: %s", " ".join(command))
    completed = subprocess.run(command, check=False, capture_output=True, text=True)
    if completed.returncode != 0:
        log.warning(
            "edgewatch evaluate of the detector failed (exit %d): %s",
            completed.returncode,
            completed.stderr.strip().splitlines()[-1:] or "no message",
        )
        return None
    try:
        parsed = json.loads(completed.stdout)
    except json.JSONDecodeError:
        log.warning("edgewatch evaluate printed no JSON")
        return None
    return parsed if isinstance(parsed, dict) else {"result": parsed}


def device_config(
    detector: Path, identity: Path, *, device_id: str = "pi-door", camera: str = "device = 0"
) -> str:
    """The face example's device config: camera → ``faces`` (detector) → ``who``."""
    who = (
        ('task = "image-classification"', ""),
        ('input = "faces"', "the detection pipeline whose boxes it crops"),
        ('input_labels = ["face"]', "which detected labels to crop"),
        (f'model = "{identity.as_posix()}"', ""),
        (f"margin = {MARGIN}", "share of the box added on each side"),
        (f"aspect = {ORL_ASPECT:.4f}", "width / height of ORL pictures (92 x 112)"),
        (f"min_size = {MIN_SIZE}", "faces smaller than this (pixels) are not identified"),
        (f"threshold = {IDENTITY_THRESHOLD}", "below it a face is reported as nobody known"),
    )
    return f"""\
# edgewatch device config: the face example. A camera, a face detector ("faces") and,
# on each face it finds, an identity classifier ("who") trained on ORL faces.
# Built by `make face-example` (training/recipes/faces.py); see docs/faces.md.
# What to edit:
#   [device] id          a name for this Pi (it appears in every MQTT topic)
#   [mqtt]               your broker; the password goes in /etc/edgewatch/environment
#   [sources.camera]     device = 0 for the first USB camera, or url = "rtsp://..."
# Every key: docs/configuration.md and docs/faces.md.

[device]
id = "{device_id}"
state_dir = "/var/lib/edgewatch"

[mqtt]
host = "broker.lan"
port = 8883
username = "{device_id}"
password_env = "EDGEWATCH_MQTT_PASSWORD"

[mqtt.tls]
ca_file = "/etc/edgewatch/ca.crt"

[runtime]
threads = 2

[sources.camera]
{camera}
fps = 5

# Finds faces in every frame.
[pipelines.faces]
task = "object-detection"
source = "camera"
model = "{detector.as_posix()}"
threshold = {DETECTOR_THRESHOLD}

# Says whose each face is: runs on the crops of the objects "faces" finds.
[pipelines.who]
{_commented(who)}
"""


def _commented(lines: Sequence[tuple[str, str]]) -> str:
    """TOML lines with their comments lined up."""
    width = max(len(line) for line, comment in lines if comment) + 2
    return "\n".join(f"{line:<{width}}# {comment}" if comment else line for line, comment in lines)


def build_face_example(options: FaceExampleOptions) -> FaceExampleResult:
    """Every step of the module docstring; returns where things are and the checks."""
    start = time.monotonic()
    out = options.out_dir
    out.mkdir(parents=True, exist_ok=True)
    settings = options.crop_settings()
    scene = SceneOptions(size=options.scene_size)

    identity_dir = out / "identity"
    if not (identity_dir / "train").is_dir():
        split = write_identity_folder(
            options.orl_dir, identity_dir, settings, holdout=options.holdout,
            variants=options.variants, seed=options.seed, scene=scene,
        )  # fmt: skip
        train_faces, test_faces = split.train_files, split.heldout_files
    else:
        log.info("reusing the identity split in %s", identity_dir)
        train_faces = _listed(options.orl_dir, identity_dir / "train")
        test_faces = _listed(options.orl_dir, identity_dir / "heldout")
    if not test_faces:
        raise DatasetError("the face example needs held-out pictures: set --holdout 1 or more")

    scenes_dir, test_dir = out / "scenes-train", out / "scenes-test"
    if not (scenes_dir / BOXES_FILE).is_file():
        write_face_scenes(scenes_dir, OrlFaces(train_faces), options.scenes, options.seed, scene)
    if not (test_dir / BOXES_FILE).is_file():
        write_face_scenes(
            test_dir, OrlFaces(test_faces), options.test_scenes, options.seed + 1, scene
        )

    bundles = out / "bundles"
    detector = bundles / f"{DETECTOR_NAME}.ewm"
    identity = bundles / f"{IDENTITY_NAME}.ewm"
    _train_and_convert(
        options, "face detector",
        ["object-detection", scenes_dir, "--epochs", str(options.detector_epochs),
         "--seed", str(options.seed), "--name", DETECTOR_NAME, *options.detector_args],
        out / "detector-model", detector,
    )  # fmt: skip
    if options.detector_crops > 0 and not (out / "identity-model" / INFO_FILE).is_file():
        write_detector_crops(
            detector, scenes_dir, identity_dir / "train", settings,
            per_identity=options.detector_crops,
        )  # fmt: skip
    _train_and_convert(
        options, "identity classifier",
        ["image-classification", identity_dir / "train", "--color", "grey",
         "--input-size", "64", "--alpha", "0.5", "--batch-size", "16",
         "--epochs", str(options.identity_epochs), "--patience", str(options.identity_patience),
         "--warmup-epochs", "10", "--seed", str(options.seed), "--name", IDENTITY_NAME],
        out / "identity-model", identity,
    )  # fmt: skip

    check = check_identity(identity, test_dir, settings, IDENTITY_THRESHOLD)
    log.info(
        "identity on held-out faces (true boxes): %d/%d right (%.3f), %d reported at "
        "threshold %.2f, %.2f ms a crop",
        check.correct, check.faces, check.accuracy, check.reported, IDENTITY_THRESHOLD,
        check.ms_per_crop_p50,
    )  # fmt: skip
    chain = check_chain(
        detector, identity, test_dir, settings, identity_threshold=IDENTITY_THRESHOLD
    )
    log.info(
        "detector then identity on the test scenes: %d of %d faces named right (%.3f), "
        "%d named wrong, %d found but not named, %d missed; %d false faces named",
        chain.named_right, chain.faces, chain.accuracy, chain.named_wrong, chain.unnamed,
        chain.faces - chain.found, chain.false_named,
    )  # fmt: skip
    evaluation = _evaluate_detector(options, detector, test_dir)

    config_path = out / "faces.toml"
    config_path.write_text(device_config(detector.resolve(), identity.resolve()), encoding="utf-8")
    who = tomllib.loads(config_path.read_text(encoding="utf-8"))["pipelines"]["who"]
    ChainedClassificationConfig.model_validate(who)
    result = FaceExampleResult(
        detector_bundle=detector,
        identity_bundle=identity,
        config=config_path,
        identity_check=check,
        chain_check=chain,
        detector_evaluation=evaluation,
        seconds=time.monotonic() - start,
    )
    report = asdict(result) | {
        "identity_accuracy": check.accuracy,
        "chain_accuracy": chain.accuracy,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    return result


def _listed(orl_dir: Path, split_dir: Path) -> tuple[tuple[str, Path], ...]:
    """The ORL originals a previous run put in ``split_dir`` (its crops are not)."""
    found = []
    for person_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        for original in sorted((orl_dir / person_dir.name).iterdir()):
            if (person_dir / original.name).is_file():
                found.append((person_dir.name, original))
    return tuple(found)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orl", type=Path, required=True, help="ORL folder (s1..s40)")
    parser.add_argument("--out", type=Path, required=True, help="work and output folder")
    parser.add_argument("--scenes", type=int, default=FaceExampleOptions.scenes)
    parser.add_argument("--test-scenes", type=int, default=FaceExampleOptions.test_scenes)
    parser.add_argument("--detector-epochs", type=int, default=FaceExampleOptions.detector_epochs)
    parser.add_argument("--identity-epochs", type=int, default=FaceExampleOptions.identity_epochs)
    parser.add_argument(
        "--identity-patience", type=int, default=FaceExampleOptions.identity_patience
    )
    parser.add_argument("--holdout", type=int, default=FaceExampleOptions.holdout)
    parser.add_argument("--variants", type=int, default=FaceExampleOptions.variants)
    parser.add_argument(
        "--detector-crops", type=int, default=FaceExampleOptions.detector_crops,
        help="crops of the trained detector's boxes per person for the identity model",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--detector-arg", action="append", default=[], metavar="ARG",
        help="passed on to `edgewatch train object-detection` (repeat for several)",
    )  # fmt: skip
    parser.add_argument("--fresh", action="store_true", help="remove --out first")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not args.orl.is_dir():
        sys.stderr.write(
            f"faces: ORL folder {args.orl} not found; pass --orl (make face-example ORL_DIR=...)\n"
        )
        return 2
    if args.fresh:
        shutil.rmtree(args.out, ignore_errors=True)
    options = FaceExampleOptions(
        orl_dir=args.orl, out_dir=args.out, scenes=args.scenes, test_scenes=args.test_scenes,
        detector_epochs=args.detector_epochs, detector_args=tuple(args.detector_arg),
        identity_epochs=args.identity_epochs, identity_patience=args.identity_patience,
        holdout=args.holdout, variants=args.variants, detector_crops=args.detector_crops,
        seed=args.seed,
    )  # fmt: skip
    try:
        result = build_face_example(options)
    except EdgewatchError as exc:
        sys.stderr.write(f"faces: {exc}\n")
        return 2
    log.info(
        "done in %.0f s: %s, %s, config %s", result.seconds, result.detector_bundle,
        result.identity_bundle, result.config,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
