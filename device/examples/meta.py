"""The sidecar that describes one kept example: what it is, where and why it was kept.

One format for every kind of example. Only images are captured today; audio clips and
log windows (later issues) fit the same sidecar: ``width``/``height`` are left out for
them and ``duration_s`` says how long the clip or window is, so neither the store, the
`collect` message nor the workstation client needs a new format when they arrive.
"""

from __future__ import annotations

import calendar
import secrets
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from device.mqtt.payloads import ModelRef

META_SCHEMA = 1

ExampleKind = Literal["image", "audio", "log"]
#: low-confidence: the top label fell just short of its threshold; disputed: the top
#: label changed between two confident frames close in time; command: someone sent `keep`.
ExampleReason = Literal["low-confidence", "disputed", "command"]

#: What an id may look like: safe as a file name and as a topic level (no dots, no
#: slashes), so an id from a command can never name a path outside the store.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"

#: The data file's extension per kind.
EXTENSIONS: dict[str, str] = {"image": ".jpg", "audio": ".wav", "log": ".log"}
MEDIA_TYPES: dict[str, str] = {"image": "image/jpeg", "audio": "audio/wav", "log": "text/plain"}

#: Longest note a `keep` command (or the detector) may attach.
MAX_NOTE_CHARS = 500


class ExampleDraft(BaseModel):
    """What the recorder knows about an example before the store has written it."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    kind: ExampleKind
    source: str
    pipeline: str
    model: ModelRef
    #: The label the model predicted (its top label), and that label's score.
    label: str
    score: float
    #: The predicted label's threshold when the example was kept.
    threshold: float | None = None
    reason: ExampleReason
    #: Unix time at which the frame (clip, window) was captured.
    captured_at: float
    #: Images only.
    width: int | None = Field(None, ge=1)
    height: int | None = Field(None, ge=1)
    #: Audio clips and log windows (reserved).
    duration_s: float | None = Field(None, ge=0.0)
    note: str | None = Field(None, max_length=MAX_NOTE_CHARS)


class ExampleMeta(ExampleDraft):
    """The JSON sidecar next to each example's data file (and inside `collect` messages):
    the draft plus what the store adds when it writes the example."""

    schema_version: int = Field(META_SCHEMA, alias="schema")
    #: Assigned by the store; increasing in the order examples were stored.
    id: str = Field(pattern=ID_PATTERN)
    #: Unix time at which the example was written to the store.
    stored_at: float
    media_type: str
    #: Size and sha256 of the data file: the store and the collect client check them.
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.kind]

    @property
    def file_name(self) -> str:
        return f"{self.id}{self.extension}"


def format_example_id(millis: int, suffix: str) -> str:
    """``20250517T101503123Z-a1b2c3``: a UTC time to the millisecond, then a random
    suffix. Fixed width, so ids sort as their times do."""
    seconds, ms = divmod(millis, 1000)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(seconds))
    return f"{stamp}{ms:03d}Z-{suffix}"


def id_millis(example_id: str) -> int | None:
    """The time part of an id made by :func:`format_example_id`, or None."""
    try:
        parsed = time.strptime(example_id[:15], "%Y%m%dT%H%M%S")
        millis = int(example_id[15:18])
    except ValueError:
        return None
    return calendar.timegm(parsed) * 1000 + millis


def random_suffix() -> str:
    return secrets.token_hex(3)
