"""The audio extra of a detection event, as it goes on the wire.

``AudioWindow`` is meant to join ``device/mqtt/payloads.py`` as ``Event.audio`` (like
``Event.box`` for images); it lives here until the daemon publishes keyword events.
A keyword detection is an ``instant`` event: ``captured_at`` is the end of its window,
``score`` the detection's smoothed score, ``top_score`` its best single window,
``duration_s`` the length of the sound inside the window.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from device.pipelines.keyword import KeywordDetection


class AudioWindow(BaseModel):
    """Where in a source's audio a detection was heard (Unix times, seconds)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: The model window the keyword is in: its first and last sample.
    start: float
    end: float
    #: The sound inside that window (frames clearly above the window's noise floor).
    speech_start: float
    speech_end: float
    #: The window's start on the source's sample timeline (seconds since it started):
    #: exact even where the Unix times were re-anchored to the clock.
    offset_s: float
    #: Consecutive windows in which the label led (more: said longer or louder).
    windows: int


def audio_window(detection: KeywordDetection) -> AudioWindow:
    shift = detection.started_at - detection.window_start_s
    return AudioWindow(
        start=detection.started_at,
        end=detection.ended_at,
        speech_start=detection.speech_start_s + shift,
        speech_end=detection.speech_end_s + shift,
        offset_s=detection.window_start_s,
        windows=detection.windows,
    )
