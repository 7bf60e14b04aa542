"""Audio sources: files, a command's PCM, and a (fake) PortAudio microphone.

Real files and real processes throughout; only the microphone is a stand-in
(tests/fake_portaudio.py), behind sounddevice's own interface.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import soundfile

from device.audio.clips import fit_clip, read_audio_file
from device.audio.config import AudioSourceConfig
from device.audio.resample import resample_clip
from device.audio.stream import AudioChunk, AudioStream
from device.errors import SourceError
from tests.fake_portaudio import FakeDevice, FakePortAudio

RATE = 16_000
FAST = {"reconnect_min_s": 0.05, "reconnect_max_s": 0.1}


def _tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def _drain(stream: AudioStream, until: Callable[[list[AudioChunk]], bool] | None = None,
           timeout_s: float = 15.0) -> list[AudioChunk]:  # fmt: skip
    chunks: list[AudioChunk] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if until is not None and until(chunks):
            return chunks
        chunk = stream.get(timeout=0.1)
        if chunk is not None:
            chunks.append(chunk)
        elif until is None and stream.finished:
            return chunks
    raise AssertionError(f"stream did not finish: {stream.stats()}")


def _contiguous(chunks: list[AudioChunk]) -> bool:
    return all(
        b.start_sample == a.start_sample + a.samples.size for a, b in pairwise(chunks)
    )


# -- files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg"])
def test_file_is_mixed_down_and_resampled(tmp_path: Path, suffix: str) -> None:
    left = _tone(2.0, 44_100)
    stereo = np.stack([left, 0.5 * left], axis=1)
    path = tmp_path / f"tone{suffix}"
    soundfile.write(path, stereo, 44_100)
    stream = AudioStream("file", AudioSourceConfig(file=path, realtime=False), RATE)
    stream.open_check()
    stream.start()
    chunks = _drain(stream)
    audio = np.concatenate([c.samples for c in chunks])
    assert abs(audio.size - 2 * RATE) <= 64
    assert _contiguous(chunks) and chunks[0].start_sample == 0
    assert [c.discontinuity for c in chunks] == [True] + [False] * (len(chunks) - 1)
    stats = stream.stats()
    assert stats.status == "stopped" and "end of" in stats.detail and stats.input_rate == 44_100
    expected = resample_clip(stereo.mean(axis=1).astype(np.float32), 44_100, RATE)
    tolerance = 2e-3 if suffix != ".ogg" else 0.05  # Vorbis is lossy
    n = min(expected.size, audio.size) - 200
    assert np.max(np.abs(audio[200:n] - expected[200:n])) < tolerance
    whole = read_audio_file(path, RATE)
    assert whole.source_rate == 44_100 and whole.source_channels == 2
    assert abs(whole.samples.size - 2 * RATE) <= 1


def test_looping_file_keeps_one_timeline(tmp_path: Path) -> None:
    path = tmp_path / "short.wav"
    soundfile.write(path, _tone(0.3, RATE), RATE)
    stream = AudioStream("loop", AudioSourceConfig(file=path, loop=True, realtime=False), RATE)
    stream.start()
    try:
        chunks = _drain(stream, until=lambda c: sum(x.samples.size for x in c) > 3 * 0.3 * RATE)
    finally:
        stream.stop()
    assert _contiguous(chunks)
    assert not any(c.discontinuity for c in chunks[1:])
    timeline = [c.timeline - chunks[0].timeline for c in chunks]
    assert np.allclose(timeline, [c.start_sample / RATE for c in chunks])


def test_realtime_file_is_paced(tmp_path: Path) -> None:
    path = tmp_path / "half.wav"
    soundfile.write(path, _tone(0.6, RATE), RATE)
    stream = AudioStream("paced", AudioSourceConfig(file=path, block_ms=50), RATE)
    began = time.monotonic()
    stream.start()
    _drain(stream)
    assert time.monotonic() - began >= 0.5


def test_bad_files_give_clear_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.wav"
    soundfile.write(good, _tone(1.0, RATE), RATE, subtype="PCM_16")
    data = good.read_bytes()
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "header.wav").write_bytes(data[:30])
    soundfile.write(tmp_path / "nothing.wav", np.zeros(0, dtype=np.float32), RATE)
    cases = {
        "missing.wav": "does not exist",
        "empty.wav": "cannot be decoded",
        "header.wav": "cannot be decoded",
        "nothing.wav": "holds no audio",
    }
    for name, message in cases.items():
        with pytest.raises(SourceError, match=message):
            read_audio_file(tmp_path / name, RATE)
        stream = AudioStream(name, AudioSourceConfig(file=tmp_path / name, realtime=False), RATE)
        with pytest.raises(SourceError, match=message):
            stream.open_check()
        # Started anyway, it fails visibly instead of delivering nothing for ever.
        stream.start()
        _wait_for(lambda s=stream: s.finished)
        assert stream.status == "failed" and message in stream.stats().detail


def test_truncated_file_plays_what_is_there_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = tmp_path / "good.wav"
    soundfile.write(good, _tone(1.0, RATE), RATE, subtype="PCM_16")
    cut = tmp_path / "cut.wav"
    cut.write_bytes(good.read_bytes()[: 44 + RATE])  # header + half a second
    with caplog.at_level(logging.WARNING):
        clip = read_audio_file(cut, RATE)
    assert clip.truncated and clip.samples.size == RATE // 2
    assert "truncated" in caplog.text
    stream = AudioStream("cut", AudioSourceConfig(file=cut, realtime=False), RATE)
    stream.start()
    chunks = _drain(stream)
    assert sum(c.samples.size for c in chunks) == RATE // 2


def test_fit_clip_pads_short_and_picks_the_loud_part_of_long_audio() -> None:
    short = np.ones(100, dtype=np.float32)
    fitted_short = fit_clip(short, 300)
    assert np.array_equal(fitted_short[:100], short) and not fitted_short[100:].any()
    long = np.zeros(5 * RATE, dtype=np.float32)
    long[3 * RATE : 3 * RATE + 4000] = 1.0
    fitted = fit_clip(long, RATE)
    assert fitted.size == RATE and fitted.sum() == 4000


# -- a command's stdout --------------------------------------------------------------------

PCM_WRITER = """
import sys, numpy as np
t = np.arange(4000) / 8000
tone = (0.25 * np.sin(2 * np.pi * 300 * t) * 32767).astype('<i2')
sys.stdout.buffer.write(np.stack([tone, tone], axis=1).tobytes())
sys.stdout.flush()
sys.stderr.write("camera went away\\n")
sys.exit(3)
"""


def test_command_pcm_is_read_and_an_exit_is_explained(tmp_path: Path) -> None:
    config = AudioSourceConfig(
        command=(sys.executable, "-c", PCM_WRITER), sample_rate=8000, channels=2, **FAST
    )
    stream = AudioStream("pcm", config, RATE)
    stream.open_check()
    stream.start()
    try:
        chunks = _drain(stream, until=lambda c: sum(x.samples.size for x in c) >= RATE - 200)
        _wait_for(lambda: stream.stats().reconnects >= 1)
        detail = stream.stats().last_error
    finally:
        stream.stop()
    assert "exited with code 3" in detail and "camera went away" in detail
    first = np.concatenate([c.samples for c in chunks])[: RATE // 2]
    assert 0.15 < float(np.max(np.abs(first))) < 0.3  # the tone survived conversion
    assert stream.stats().input_rate == 8000


def test_command_that_writes_nothing_is_restarted_and_stopped(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = (
        f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    )
    config = AudioSourceConfig(
        command=(sys.executable, "-c", script), sample_rate=RATE, stall_timeout_s=0.3, **FAST
    )
    stream = AudioStream("silent", config, RATE)
    stream.start()
    try:
        _wait_for(lambda: "wrote no audio" in stream.stats().detail)
        _wait_for(lambda: pid_file.exists() and pid_file.read_text() != "")
        pid = int(pid_file.read_text())
    finally:
        stream.stop()
    assert stream.status == "stopped"

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    _wait_for(gone, timeout_s=5.0)


def test_missing_program_fails_clearly() -> None:
    config = AudioSourceConfig(command=("no-such-recorder-xyz", "-"), sample_rate=RATE)
    stream = AudioStream("nothing", config, RATE)
    with pytest.raises(SourceError, match="not found"):
        stream.open_check()
    stream.start()
    _wait_for(lambda: stream.finished)
    assert stream.status == "failed" and "no-such-recorder-xyz" in stream.stats().detail


# -- the microphone (PortAudio, faked) ------------------------------------------------------


def _mic(**device: object) -> tuple[FakePortAudio, FakeDevice]:
    audio = np.stack([_tone(1.0, 48_000), _tone(1.0, 48_000, 600.0)], axis=1)
    fake = FakeDevice(name="USB PnP Sound Device", audio=audio, **device)  # type: ignore[arg-type]
    other = FakeDevice(name="HDA Intel PCH", audio=audio[:, :1])
    return FakePortAudio([other, fake]), fake


def test_microphone_native_rate_is_resampled_and_overruns_are_counted() -> None:
    portaudio, _ = _mic(overflow_blocks=frozenset({5}))
    config = AudioSourceConfig(device="usb", channels=2, block_ms=20)
    stream = AudioStream("mic", config, RATE, portaudio=portaudio)
    stream.start()
    try:
        chunks = _drain(stream, until=lambda c: sum(x.samples.size for x in c) >= 2 * RATE)
    finally:
        stream.stop()
    stats = stream.stats()
    assert stats.input_rate == 48_000 and stats.overruns == 1
    assert chunks[0].discontinuity
    flagged = [i for i, c in enumerate(chunks) if c.discontinuity]
    assert len(flagged) == 2, flagged  # the start, and the block after the overrun
    assert all(c.samples.ndim == 1 for c in chunks)
    assert "USB PnP Sound Device at 48000 Hz" in stats.detail or stats.status == "stopped"


@pytest.mark.parametrize("vanish", ["error", "silent"])
def test_vanished_microphone_is_reported_and_reopened(vanish: str) -> None:
    portaudio, device = _mic(vanish=vanish)
    config = AudioSourceConfig(device="USB", channels=2, stall_timeout_s=0.3, **FAST)
    stream = AudioStream("mic", config, RATE, portaudio=portaudio)
    stream.start()
    try:
        _drain(stream, until=lambda c: len(c) >= 5)
        assert stream.status == "running"
        device.plugged = False
        _wait_for(lambda: stream.status == "reconnecting")
        detail = stream.stats().detail
        assert "USB PnP Sound Device" in detail or "usb" in detail.lower()
        # While it is away, reopening fails and says which devices there are.
        _wait_for(lambda: "HDA Intel PCH" in stream.stats().detail)
        device.plugged = True
        _wait_for(lambda: stream.status == "running")
        after = _drain(stream, until=lambda c: len(c) >= 3)
    finally:
        stream.stop()
    assert stream.stats().reconnects >= 1 and device.streams_opened >= 2
    assert after[0].discontinuity or any(c.discontinuity for c in after)


def test_microphone_configuration_problems_are_named() -> None:
    portaudio, _ = _mic()
    cases = [
        (AudioSourceConfig(device="webcam", **FAST), "no usable input device 'webcam'"),
        (AudioSourceConfig(device="USB", channels=4, **FAST), "has 2 input channel(s)"),
        (AudioSourceConfig(device="USB", sample_rate=16_000, **FAST), "Invalid sample rate"),
    ]
    for config, message in cases:
        stream = AudioStream("mic", config, RATE, portaudio=portaudio)
        stream.start()
        try:
            _wait_for(lambda s=stream, m=message: m in s.stats().detail)
            assert stream.status == "reconnecting"
        finally:
            stream.stop()


def test_config_needs_exactly_one_input() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="exactly one"):
        AudioSourceConfig()
    with pytest.raises(ValidationError, match="exactly one"):
        AudioSourceConfig(device=0, file=Path("x.wav"))
    with pytest.raises(ValidationError, match="sample_rate"):
        AudioSourceConfig(command=("arecord",))
    assert "***@" in AudioSourceConfig(
        command=("rtsp://user:pw@cam/stream",), sample_rate=RATE
    ).describe()
