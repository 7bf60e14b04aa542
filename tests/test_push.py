"""`edgewatch push` against real daemons through a real mosquitto.

A push is chunked, reassembled, verified, smoke-tested, stored and swapped in between two
frames while events keep flowing; bad bundles are refused with their reason on the
retained models/status topic while the old model serves on; a push survives its
connection being cut and a pusher that dies; a group push reaches every member.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import zipfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from converters.bundle_writer import generate_keys
from device.bundle.reader import MANIFEST_NAME, read_bundle
from device.cli import main
from device.mqtt.payloads import Event
from tests.conftest import Broker, free_port
from tests.helpers_modelstore import (
    Daemons,
    RunningDaemon,
    assert_contiguous,
    events_in,
    progress_in,
    scene_video,
    tampered,
    variant,
    wait_events,
    wait_status,
    write_device_config,
)
from tests.helpers_mqtt import Probe
from training.push import (
    EXIT_NO_ANSWER,
    EXIT_NO_DEVICES,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    BundlePusher,
    PushOptions,
    push_bundle,
)

FAST = PushOptions(chunk_bytes=4096, timeout_s=30.0, progress=False, discover_s=1.0)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return scene_video(tmp_path_factory)


@pytest.fixture
def daemons() -> Iterator[Daemons]:
    with Daemons() as running:
        yield running


def reporting_everything(src: Path, dst: Path, **updates: object) -> Path:
    """The model with no background label: every frame's top label is reportable, so an
    event is open at every instant (one spans any swap)."""
    manifest = read_bundle(src).manifest
    decoding = manifest.decoding.model_copy(update={"background_labels": ()})
    return variant(src, dst, decoding=decoding, **updates)


def started(probe: Probe) -> None:
    wait_status(probe, lambda s: bool(s.models) and s.models[0].active is not None)
    wait_events(probe, 3)


def test_push_swaps_between_frames_and_loses_none(
    mosquitto: Broker,
    int8_bundle: Path,
    video: Path,
    daemons: Daemons,
    tmp_path: Path,
) -> None:
    base = reporting_everything(int8_bundle, tmp_path / "base.ewm")
    newer = reporting_everything(int8_bundle, tmp_path / "v2.ewm", version="0.2.0")
    config = write_device_config(tmp_path, mosquitto.port, video, base, loop=False)
    probe = Probe(mosquitto.host, mosquitto.port, "edgewatch/cam1/#")
    running: RunningDaemon = daemons.start(config)
    started(probe)

    outcome = push_bundle(
        newer.read_bytes(), mosquitto.host, mosquitto.port, device="cam1", options=FAST
    )
    assert outcome.exit_code == EXIT_OK, outcome
    assert outcome.results[0].state == "installed"
    count = -(-newer.stat().st_size // FAST.chunk_bytes)
    assert count > 3 and outcome.chunks_sent >= count
    status = wait_status(probe, lambda s: s.last_push is not None)
    active = status.models[0].active
    assert active is not None and active.origin == "push"
    assert active.bundle_sha256 == hashlib.sha256(newer.read_bytes()).hexdigest()
    assert status.last_push is not None and status.last_push.ok
    assert status.last_push.version == "0.2.0"
    assert [h.action for h in status.models[0].history][-2:] == ["installed", "activated"]
    states = {p.state for p in progress_in(probe)}
    assert {"receiving", "verifying", "installed"} <= states

    running.thread.join(timeout=30)  # the file is played once: the daemon ends by itself
    assert not running.thread.is_alive()
    daemon = running.daemon
    camera = daemon.streams["desk"].stats()
    # Every frame the source produced was inferred, none dropped around the swap.
    assert camera.dropped == 0
    assert camera.frames == daemon.switcher.inferences(0) > 100
    assert daemon.pipelines[0].model.version == "0.2.0"
    report = daemon.models.reports[-1]
    assert report.ok and report.swapped and report.switch_ms < 1000

    events = [e for e in events_in(probe) if e.pipeline == "shapes"]
    assert_contiguous(events)
    versions = [e.model.version for e in events]
    switch = versions.index("0.2.0")
    assert set(versions[:switch]) == {"0.1.0"} and set(versions[switch:]) == {"0.2.0"}
    by_event: dict[str, set[str]] = defaultdict(set)
    for event in events:
        by_event[event.event_id].add(event.model.version)
    # The event open at the swap went on under the new model with the same event_id.
    assert any(len(v) == 2 for v in by_event.values())
    spanning = next(i for i, v in by_event.items() if len(v) == 2)
    assert next(e.type for e in events if e.event_id == spanning) == "start"
    probe.close()


def _forged(signed: Path, dst: Path) -> Path:
    """A signed bundle whose manifest was edited afterwards (the signature is kept)."""
    with zipfile.ZipFile(signed) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    manifest = json.loads(members[MANIFEST_NAME])
    manifest["thresholds"]["default"] = 0.01
    members[MANIFEST_NAME] = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    dst.write_bytes(buffer.getvalue())
    return dst


def test_bad_bundles_are_refused_with_reasons_while_events_flow(
    mosquitto: Broker,
    int8_bundle: Path,
    video: Path,
    daemons: Daemons,
    tmp_path: Path,
) -> None:
    private, public = generate_keys(tmp_path / "keys")
    base = reporting_everything(int8_bundle, tmp_path / "base.ewm", sign_key=private)
    signed_v2 = reporting_everything(
        int8_bundle, tmp_path / "v2.ewm", version="0.2.0", sign_key=private
    )
    manifest = read_bundle(base).manifest
    wide = manifest.preprocessing.model_copy(update={"width": 48, "height": 48})
    truncated = tmp_path / "truncated.ewm"
    truncated.write_bytes(signed_v2.read_bytes()[: signed_v2.stat().st_size // 2])
    cases = [
        ("tampered", tampered(signed_v2, tmp_path / "tampered.ewm"), "altered"),
        ("forged", _forged(signed_v2, tmp_path / "forged.ewm"), "does not match"),
        ("unsigned", reporting_everything(int8_bundle, tmp_path / "u.ewm", version="0.3.0"),
         "not signed"),
        ("truncated", truncated, "not a zip archive"),
        ("wrong task", variant(signed_v2, tmp_path / "task.ewm", sign_key=private,
                               task="audio-classification"), "wrong task"),
        ("wrong shape", variant(signed_v2, tmp_path / "shape.ewm", sign_key=private,
                                preprocessing=wide), "wrong input shape"),
    ]  # fmt: skip
    config = write_device_config(
        tmp_path, mosquitto.port, video, base, public_key=public, loop=True
    )
    probe = Probe(mosquitto.host, mosquitto.port, "edgewatch/cam1/#")
    running = daemons.start(config)
    started(probe)

    marks = []
    for name, bundle, expected in cases:
        outcome = push_bundle(
            bundle.read_bytes(), mosquitto.host, mosquitto.port, device="cam1", options=FAST
        )
        assert outcome.exit_code == EXIT_REFUSED, (name, outcome)
        assert expected in outcome.results[0].reason, (name, outcome.results[0].reason)
        sha = hashlib.sha256(bundle.read_bytes()).hexdigest()
        status = wait_status(
            probe, lambda s, sha=sha: s.last_push is not None and s.last_push.sha256 == sha
        )
        assert status.last_push is not None and not status.last_push.ok
        assert expected in status.last_push.reason, name
        active = status.models[0].active
        assert active is not None and active.version == "0.1.0"  # the old model serves on
        assert running.daemon.pipelines[0].model.version == "0.1.0"
        # Events keep coming after the refusal, from the old model.
        marks.append(len(wait_events(probe, len(events_in(probe)) + 1)))
    history = status.models[0].history
    assert {"wrong task", "wrong input shape"} <= {
        h.reason.split(":")[0] for h in history if h.action == "refused"
    }
    wait_events(probe, marks[-1] + 3)
    running.stop()
    events: list[Event] = events_in(probe)
    assert_contiguous(events)
    # No silence longer than 1 s at any point (events come every 0.2 s).
    assert all(b > a for a, b in itertools.pairwise(marks))
    gaps = [b.published_at - a.published_at for a, b in itertools.pairwise(events)]
    assert max(gaps) < 1.0
    assert {e.model.version for e in events} == {"0.1.0"}
    probe.close()


def test_push_resumes_after_the_connection_is_cut(
    mosquitto: Broker,
    int8_bundle: Path,
    video: Path,
    daemons: Daemons,
    tmp_path: Path,
) -> None:
    base = reporting_everything(int8_bundle, tmp_path / "base.ewm")
    newer = reporting_everything(int8_bundle, tmp_path / "v2.ewm", version="0.2.0")
    config = write_device_config(tmp_path, mosquitto.port, video, base)
    probe = Probe(mosquitto.host, mosquitto.port, "edgewatch/cam1/#")
    daemons.start(config)
    started(probe)
    options = PushOptions(chunk_bytes=1024, timeout_s=40.0, progress=False)
    data = newer.read_bytes()
    count = -(-len(data) // options.chunk_bytes)
    assert count >= 20

    # 1. The pusher dies a third of the way in (its process ends: connection closed).
    class PusherDiedError(Exception):
        pass

    def die(pusher: BundlePusher, index: int) -> None:
        if index == count // 3:
            raise PusherDiedError

    with pytest.raises(PusherDiedError):
        push_bundle(data, mosquitto.host, mosquitto.port, device="cam1", options=options,
                    on_chunk_sent=die)  # fmt: skip

    # 2. Run again, and cut its connection mid-way: it reconnects and finishes.
    cut: list[int] = []

    def cut_once(pusher: BundlePusher, index: int) -> None:
        if index >= 2 * count // 3 and not cut:
            cut.append(index)
            sock = pusher.client.socket()
            assert sock is not None
            sock.close()

    outcome = push_bundle(data, mosquitto.host, mosquitto.port, device="cam1",
                          options=options, on_chunk_sent=cut_once)  # fmt: skip
    assert outcome.exit_code == EXIT_OK, outcome
    assert cut and outcome.reconnects >= 1
    # The device kept the first run's chunks: the second run did not start over.
    assert outcome.resumed_from.get("cam1", 0) >= count // 3 - 8
    assert outcome.chunks_sent < count + count // 2
    status = wait_status(probe, lambda s: s.last_push is not None)
    assert status.last_push.ok and status.last_push.version == "0.2.0"  # type: ignore[union-attr]
    # Pushing the same file again is answered with the verdict, nothing is re-sent.
    again = push_bundle(data, mosquitto.host, mosquitto.port, device="cam1", options=options)
    assert again.exit_code == EXIT_OK and again.chunks_sent == 1
    probe.close()


def test_group_push_reaches_every_member(
    mosquitto: Broker,
    int8_bundle: Path,
    video: Path,
    daemons: Daemons,
    tmp_path: Path,
) -> None:
    base = reporting_everything(int8_bundle, tmp_path / "base.ewm")
    newer = reporting_everything(int8_bundle, tmp_path / "v2.ewm", version="0.2.0")
    probe = Probe(mosquitto.host, mosquitto.port, "edgewatch/#")
    for device in ("cam1", "cam2"):
        daemons.start(write_device_config(tmp_path, mosquitto.port, video, base,
                                         device_id=device, groups=("lobby",), fps=10))  # fmt: skip
    # A device of the group that is offline (retained state and last will) is skipped.
    ghost = '{"schema":1,"device":"ghost","software_version":"0","started_at":0,' \
            '"updated_at":0,"groups":["lobby"],"sources":[],"pipelines":[]}'  # fmt: skip
    probe.publish("edgewatch/ghost/state", ghost, retain=True)
    probe.publish("edgewatch/ghost/availability", "offline", retain=True)
    for device in ("cam1", "cam2"):
        assert probe.wait_for(lambda m, d=device: m.topic == f"edgewatch/{d}/models/status")

    with_bar = PushOptions(chunk_bytes=4096, timeout_s=30.0, progress=True, discover_s=1.0)
    outcome = push_bundle(
        newer.read_bytes(), mosquitto.host, mosquitto.port, group="lobby", options=with_bar
    )
    assert outcome.exit_code == EXIT_OK, outcome
    assert sorted(r.device for r in outcome.results) == ["cam1", "cam2"]
    count = -(-newer.stat().st_size // FAST.chunk_bytes)
    assert outcome.chunks_sent < 2 * count  # one copy for the group, not one per device
    for device in ("cam1", "cam2"):
        found = probe.wait_for(
            lambda m, d=device: m.topic == f"edgewatch/{d}/models/status"
            and b'"version":"0.2.0"' in m.payload
        )
        assert found is not None, device
    probe.close()


def test_push_exit_codes(
    mosquitto: Broker, int8_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = str(int8_bundle)
    broker = f"127.0.0.1:{mosquitto.port}"
    quiet = ["--no-progress", "--timeout", "2"]
    assert main(["push", bundle, "--device", "nobody", "--broker", broker, *quiet]) == (
        EXIT_NO_ANSWER
    )
    assert "nobody: no-answer" in capsys.readouterr().out
    assert main(["push", bundle, "--group", "empty", "--broker", broker, "--discover", "0.3",
                 *quiet]) == EXIT_NO_DEVICES  # fmt: skip
    unreachable = f"127.0.0.1:{free_port()}"
    assert main(["push", bundle, "--device", "d", "--broker", unreachable, *quiet]) == (
        EXIT_UNREACHABLE
    )
    not_a_bundle = tmp_path / "x.ewm"
    not_a_bundle.write_text("hello")
    assert main(["push", str(not_a_bundle), "--device", "d", "--broker", broker, *quiet]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["push", bundle, "--broker", broker])  # neither --device nor --group
    assert exc.value.code == 2


def test_a_chunk_paho_refused_is_not_waited_for() -> None:
    """A publish made just as the connection dropped comes back refused (no
    connection); the window lets it go instead of raising, and the device asks for that
    chunk again. A queued, unacknowledged one is still waited for."""
    import paho.mqtt.client as mqtt

    from training.push import _settled

    refused = mqtt.MQTTMessageInfo(7)
    refused.rc = mqtt.MQTT_ERR_NO_CONN
    with pytest.raises(RuntimeError):
        refused.is_published()  # what the window used to call
    assert _settled(refused)
    queued = mqtt.MQTTMessageInfo(8)
    assert not _settled(queued)
    queued._set_as_published()
    assert _settled(queued)
