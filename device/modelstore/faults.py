"""A test hook that kills the daemon at a chosen step of installing a pushed bundle.

The crash tests prove that a device always boots with a valid model whatever instant
power is lost. A real SIGKILL (no cleanup, no flush, no finally) at an exact step is the
honest way to get there, so the daemon kills itself when ``EDGEWATCH_FAULT_AT`` names the
step it has reached. Unset (always, outside tests), this costs one dictionary lookup.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Literal

log = logging.getLogger(__name__)

FAULT_ENV = "EDGEWATCH_FAULT_AT"
FaultStep = Literal["before-verify", "after-write", "before-rename", "after-rename"]
FAULT_STEPS: tuple[FaultStep, ...] = (
    "before-verify",
    "after-write",
    "before-rename",
    "after-rename",
)


def fault_point(step: FaultStep) -> None:
    """SIGKILL this process if ``EDGEWATCH_FAULT_AT`` equals ``step``."""
    if os.environ.get(FAULT_ENV) != step:
        return
    log.critical("%s=%s: killing this process (test hook)", FAULT_ENV, step)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.kill(os.getpid(), signal.SIGKILL)
