"""A keyword detection's audio window, as ``Event.audio`` carries it on the wire."""

from __future__ import annotations

from device.mqtt.payloads import AudioWindow
from device.pipelines.keyword import KeywordDetection


def audio_window(detection: KeywordDetection) -> AudioWindow:
    """Stream-time positions become Unix times through the window's own anchor, so the
    speech bounds stay consistent with ``start`` even after the clock was re-anchored."""
    shift = detection.started_at - detection.window_start_s
    return AudioWindow(
        start=detection.started_at,
        end=detection.ended_at,
        speech_start=detection.speech_start_s + shift,
        speech_end=detection.speech_end_s + shift,
        offset_s=detection.window_start_s,
        windows=detection.windows,
    )
