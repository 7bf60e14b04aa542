"""Small JSON state files (read positions) written atomically.

A position file is rewritten about once a second while lines flow. Each write goes to a
temporary file that then replaces the old one (``os.replace``), so a reader, or the next
start after a crash, sees either the old position or the new one, never half of each.
With ``fsync`` the data is flushed before the rename, so a power cut cannot leave an
empty file behind either; it costs a flush a second, which an SD card takes easily.

A file that exists but cannot be understood is kept aside as ``<name>.corrupt-<ms>`` and
the source starts as if it had no state (its ``start_at`` rule), with a warning: a
position is worth less than a daemon that starts.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

log = logging.getLogger(__name__)

StateT = TypeVar("StateT", bound=BaseModel)


class StateFile:
    """One JSON document validated by a pydantic model, replaced atomically on save."""

    def __init__(self, path: Path, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._write_failed = False
        self.writes = 0
        self.write_errors = 0

    def load(self, model: type[StateT]) -> StateT | None:
        """The saved state, or None when there is none (or it was unreadable)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read state file %s (%s); starting without it", self.path, exc)
            return None
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            backup = self.path.with_name(f"{self.path.name}.corrupt-{time.time_ns() // 1_000_000}")
            try:
                os.replace(self.path, backup)
                kept = f"kept as {backup.name}"
            except OSError as move_exc:
                kept = f"could not keep a copy ({move_exc})"
            log.warning(
                "state file %s is not valid (%s); %s. The source starts without its saved position",
                self.path,
                exc.errors()[0]["msg"] if exc.errors() else exc,
                kept,
            )
            return None

    def save(self, state: BaseModel) -> bool:
        """Replace the file with ``state``; False (logged once) when it cannot be written."""
        data = state.model_dump_json().encode("utf-8")
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as handle:
                handle.write(data)
                if self.fsync:
                    handle.flush()
                    os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            self.write_errors += 1
            if not self._write_failed:
                log.error(
                    "cannot write state file %s (%s); reading goes on, but a restart will "
                    "not resume from here. Check free space and permissions of the state "
                    "folder",
                    self.path,
                    exc,
                )
            self._write_failed = True
            return False
        self.writes += 1
        if self._write_failed:
            log.info("state file %s is writable again", self.path)
            self._write_failed = False
        return True
