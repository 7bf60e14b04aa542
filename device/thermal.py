"""The SoC temperature, for the stats message: a Pi throttles when it runs hot, and a
falling frame rate is much easier to explain with the temperature next to it."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def read_temperature_c(path: Path | None) -> float | None:
    """Degrees Celsius from a Linux thermal-zone file (millidegrees); None when the
    file is absent or unreadable, which is normal in containers and on most PCs."""
    if path is None:
        return None
    try:
        raw = path.read_text(encoding="ascii").strip()
        return round(int(raw) / 1000.0, 1)
    except (OSError, ValueError) as exc:
        log.debug("no temperature from %s: %s", path, exc)
        return None
