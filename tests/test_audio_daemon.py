"""Keyword spotting in the running daemon: a WAV file read as an audio source, scored by
the session's int8 keyword model, one instant event per spoken word with its audio
window, a threshold changed by command over the broker, and check-config on the same
file."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import soundfile

from device.check import check_config
from device.config import load_config
from device.daemon import Daemon
from device.mqtt.payloads import CommandResult, Event, State, Stats
from tests.conftest import Broker
from tests.helpers_audio import RATE, TEST_VOICES, keyword_stream
from tests.helpers_mqtt import Probe

BASE = "edgewatch/pi1"
TOLERANCE_S = 0.25


def _config(tmp_path: Path, port: int, wav: Path, bundle: Path) -> Path:
    path = tmp_path / "device.toml"
    path.write_text(
        f"""
[device]
id = "pi1"
state_dir = "{tmp_path / "state"}"

[mqtt]
host = "127.0.0.1"
port = {port}

[stats]
interval_s = 1

[sources.kitchen]
kind = "audio"
file = "{wav.name}"
realtime = false

[pipelines.words]
task = "audio-classification"
source = "kitchen"
model = "{bundle}"
"""
    )
    return path


def test_a_wav_becomes_one_event_per_keyword(
    mosquitto: Broker, keyword_bundle: Path, tmp_path: Path
) -> None:
    said = [("yes", TEST_VOICES[0], 1.0), ("stop", TEST_VOICES[1], 3.5),
            ("left", TEST_VOICES[2], 6.0)]  # fmt: skip
    audio, placements = keyword_stream(8.5, said, np.random.default_rng(5))
    wav = tmp_path / "kitchen.wav"
    soundfile.write(wav, audio, RATE, subtype="PCM_16")
    config_path = _config(tmp_path, mosquitto.port, wav, keyword_bundle)

    report = check_config(config_path)
    assert report.ok, report.render()
    assert any(line.subject == "sources.kitchen" and "kitchen.wav" in line.detail
               for line in report.lines)  # fmt: skip

    daemon = Daemon(load_config(config_path))
    probe = Probe(mosquitto.host, mosquitto.port, f"{BASE}/#")
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()
    try:
        stats = probe.wait_for(
            lambda m: m.topic == f"{BASE}/stats"
            and Stats.model_validate_json(m.payload).pipelines[0].events >= len(said),
            60,
        )
        assert stats is not None, "the keywords in the file never became events"
        probe.publish(f"{BASE}/cmd/threshold", json.dumps({"label": "yes", "threshold": 0.97}))
        answer = probe.wait_for(lambda m: m.topic == f"{BASE}/cmd/threshold/result", 10)
        assert answer is not None
        result = CommandResult.model_validate_json(answer.payload)
        assert result.ok, result
        thresholds = daemon.report_state()["thresholds"]
        assert isinstance(thresholds, dict)
        assert thresholds["words"]["yes"] == 0.97  # type: ignore[index,call-overload]
    finally:
        daemon.stop()
        runner.join(15)
        probe.close()

    events = [Event.model_validate_json(m.payload) for m in probe.messages
              if m.topic == f"{BASE}/events/kitchen"]  # fmt: skip
    assert [e.label for e in events] == [word for word, _, _ in said]
    assert all(e.type == "instant" and e.task == "audio-classification" for e in events)
    assert [e.seq for e in events] == list(range(events[0].seq, events[0].seq + len(said)))
    for event, placed in zip(events, placements, strict=True):
        window = event.audio
        assert window is not None
        # The file's Unix timeline starts when it was opened: compare stream offsets.
        start = window.speech_start - window.start + window.offset_s
        assert abs(start - placed.onset_s) <= TOLERANCE_S, (event, placed)
        assert abs(window.end - window.start - 1.0) < 1e-3  # the model's one-second window
        assert event.captured_at == window.end and event.score <= event.top_score + 1e-6

    states = [State.model_validate_json(m.payload) for m in probe.messages
              if m.topic == f"{BASE}/state"]  # fmt: skip
    assert states[-1].sources[0].kind == "audio"
    assert states[-1].pipelines[0].task == "audio-classification"
    figures = Stats.model_validate_json(stats.payload)
    assert figures.sources[0].frames > 0 and figures.pipelines[0].inferences > 0
