"""Default model versions: the training time, so a retrained model never carries the
version of the one it replaces (devices, models/status and Home Assistant report it)."""

from __future__ import annotations

import datetime


def timestamp_version() -> str:
    """UTC ``YYYYMMDD.HHMMSS``: orders by training time, fits the manifest's pattern."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y%m%d.%H%M%S")
