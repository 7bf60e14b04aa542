"""The model store on the device: every version on disk, which one is active, what happened.

Layout, under ``<state_dir>/models/``::

    <model-name>/<version>-<sha12>.ewm   one file per version (sha12: the bundle's sha256)
    <model-name>/state.json              active version, previous ones, history, generation
    .lock                                serialises writers (daemon and `edgewatch models`)
    daemon.lock                          held by a running daemon (so the CLI can tell)

Every write goes through a temporary file, fsync, rename and an fsync of the folder, so
a crash at any instant leaves either the old state or the new one, never a mix; a bundle
file is complete before ``state.json`` ever names it. ``state.json`` is the single commit
point: a version is active exactly when it says so. Leftovers of an interrupted write
(``.incoming-*``, ``*.tmp-*``) and bundle files no state names are removed at open.

Each state change increments ``generation``; a running daemon polls it and applies
changes made by `edgewatch models activate/rollback` live.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from device.bundle.manifest import Manifest
from device.durable import TMP_MARK, atomic_write, fsync_dir, remove_leftovers
from device.errors import ModelStoreError
from device.modelstore.faults import fault_point
from device.mqtt.payloads import HistoryAction, ModelHistoryEntry, ModelOrigin

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
INCOMING_MARK = ".incoming-"
LOCK_FILE = ".lock"
DAEMON_LOCK_FILE = "daemon.lock"
BUNDLE_SUFFIX = ".ewm"
STORE_SCHEMA = 1


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class VersionRecord(_Frozen):
    """One bundle file in the store."""

    #: ``<version>-<sha12>``: unique even when two bundles state the same version.
    key: str
    version: str
    bundle_sha256: str
    model_sha256: str
    installed_at: float
    #: How it entered the store: imported from the config's ``model``, or pushed.
    origin: ModelOrigin

    @property
    def file_name(self) -> str:
        return f"{self.key}{BUNDLE_SUFFIX}"


class ModelState(_Frozen):
    """``state.json`` of one model."""

    schema_version: int = Field(STORE_SCHEMA, alias="schema")
    name: str
    #: Incremented by every change; a running daemon watches it.
    generation: int = 0
    #: The generation a running daemon last applied (written by the daemon only).
    applied_generation: int = 0
    #: Key of the active version; None before anything was installed.
    active: str | None = None
    origin: ModelOrigin = "config"
    since: float = 0.0
    #: Versions active before, most recent first: what `rollback` goes back to.
    previous: tuple[str, ...] = ()
    versions: tuple[VersionRecord, ...] = ()
    history: tuple[ModelHistoryEntry, ...] = ()
    #: sha256 of the config file's bundle when it was last imported.
    config_bundle_sha256: str = ""

    def record(self, key: str | None) -> VersionRecord | None:
        return next((v for v in self.versions if v.key == key), None)

    @property
    def active_record(self) -> VersionRecord | None:
        return self.record(self.active)


def version_key(version: str, bundle_sha256: str) -> str:
    return f"{version}-{bundle_sha256[:12]}"


def _intact(path: Path, sha256: str) -> bool:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    except OSError:
        return False


class ModelStore:
    """Thread-safe within a process, and locked against other processes (the CLI)."""

    def __init__(self, root: Path, keep_versions: int = 3, history_limit: int = 20) -> None:
        self.root = root
        self.keep_versions = max(1, keep_versions)
        self.history_limit = max(1, history_limit)
        self._mutex = threading.RLock()
        self._depth = 0
        self._lock_fd: int | None = None
        self._daemon_fd: int | None = None

    # -- opening and locking ------------------------------------------------------------

    def open(self) -> ModelStore:
        """Create the folder and clean what an interrupted write left behind."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self.lock():
            for directory in sorted(p for p in self.root.iterdir() if p.is_dir()):
                self._clean(directory)
        return self

    def _clean(self, directory: Path) -> None:
        remove_leftovers(directory, (INCOMING_MARK, TMP_MARK))
        state = self.read(directory.name)
        named = {v.file_name for v in state.versions} if state else set()
        for entry in directory.glob(f"*{BUNDLE_SUFFIX}"):
            if entry.name not in named:
                log.info("model store: removing %s, which no state.json names", entry)
                entry.unlink(missing_ok=True)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive across processes; re-entrant within this store object."""
        with self._mutex:
            if self._depth == 0:
                self.root.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._lock_fd = fd
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._lock_fd is not None:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                    os.close(self._lock_fd)
                    self._lock_fd = None

    def claim_daemon(self) -> bool:
        """Mark this process as the daemon serving the store; False if another holds it."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / DAEMON_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._daemon_fd = fd
        return True

    def release_daemon(self) -> None:
        if self._daemon_fd is not None:
            fcntl.flock(self._daemon_fd, fcntl.LOCK_UN)
            os.close(self._daemon_fd)
            self._daemon_fd = None

    def daemon_pid(self) -> int | None:
        """The pid of a daemon serving this store, or None when none runs."""
        path = self.root / DAEMON_LOCK_FILE
        if not path.exists():
            return None
        fd = os.open(path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.read(fd, 32).decode("ascii", "replace").strip()
                return int(text) if text.isdigit() else -1
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    # -- reading ------------------------------------------------------------------------

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / STATE_FILE).is_file())

    def read(self, name: str) -> ModelState | None:
        """The model's state, or None when the store has never held it. Lock-free: the
        file is only ever replaced whole."""
        path = self.root / name / STATE_FILE
        try:
            document = json.loads(path.read_bytes())
            return ModelState.model_validate(document)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, ValidationError) as exc:
            # Cannot happen through this class (atomic writes); a hand edit can do it.
            raise ModelStoreError(
                f"{path} is unreadable ({exc}); fix or delete it (the daemon then falls "
                "back to the config's model)"
            ) from exc

    def path_of(self, name: str, record: VersionRecord) -> Path:
        return self.root / name / record.file_name

    def resolve(self, name: str, spec: str) -> VersionRecord:
        """A version by key (``1.2.0-0123456789ab``), or by version when that is unique."""
        state = self.read(name)
        if state is None:
            raise ModelStoreError(
                f"the store holds no model {name!r}; it holds: {', '.join(self.names()) or 'none'}"
            )
        exact = [v for v in state.versions if v.key == spec]
        matches = exact or [v for v in state.versions if v.version == spec]
        if len(matches) == 1:
            return matches[0]
        known = ", ".join(v.key for v in state.versions)
        if not matches:
            raise ModelStoreError(f"model {name} has no version {spec!r}; it has: {known}")
        raise ModelStoreError(
            f"model {name} has several bundles of version {spec!r}; name one by key: {known}"
        )

    # -- changing -------------------------------------------------------------------------

    def install(
        self,
        name: str,
        data: bytes,
        manifest: Manifest,
        origin: ModelOrigin,
        *,
        faults: bool = False,
        reason: str = "",
    ) -> ModelState:
        """Write a verified bundle as a new version and make it active, durably.

        With ``faults`` (pushes), the steps named in device/modelstore/faults.py can kill
        the process: after the bundle file is written and synced, before and after
        ``state.json``'s rename.
        """
        bundle_sha = hashlib.sha256(data).hexdigest()
        key = version_key(manifest.version, bundle_sha)
        with self.lock():
            directory = self.root / name
            directory.mkdir(parents=True, exist_ok=True)
            state = self.read(name) or ModelState(name=name)
            record = state.record(key)
            final = directory / f"{key}{BUNDLE_SUFFIX}"
            if record is None or not _intact(final, bundle_sha):
                self._write_bundle(final, data, faults)
                record = VersionRecord(
                    key=key,
                    version=manifest.version,
                    bundle_sha256=bundle_sha,
                    model_sha256=manifest.model.sha256,
                    installed_at=time.time(),
                    origin=origin,
                )
                versions = (*(v for v in state.versions if v.key != key), record)
                state = state.model_copy(update={"versions": versions})
                state = self._with_history(state, "installed", record, origin, reason)
            if origin == "config":
                state = state.model_copy(update={"config_bundle_sha256": bundle_sha})
            state, dropped = self._pruned(self._activated(state, record, origin, reason))
            before = (lambda: fault_point("before-rename")) if faults else None
            state = self._commit(state, before_rename=before)
            if faults:
                fault_point("after-rename")
            for gone in dropped:
                # After the commit: a crash before this leaves files that open() removes.
                self.path_of(name, gone).unlink(missing_ok=True)
                log.info("model store: removed %s %s (keeping %d)", name, gone.key,
                         self.keep_versions)  # fmt: skip
            return state

    def _write_bundle(self, final: Path, data: bytes, faults: bool) -> None:
        tmp = final.with_name(f"{INCOMING_MARK}{final.name}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            if faults:
                fault_point("after-write")
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(final.parent)

    def activate(
        self, name: str, key: str, origin: ModelOrigin = "activate", reason: str = ""
    ) -> ModelState:
        with self.lock():
            state = self._require(name)
            record = state.record(key)
            if record is None:
                raise ModelStoreError(f"model {name} has no version {key!r}")
            if state.active == key:
                return state
            return self._commit(self._activated(state, record, origin, reason))

    def rollback(self, name: str, reason: str = "") -> ModelState:
        """Make the most recent previous version active again (origin ``rollback``)."""
        with self.lock():
            state = self._require(name)
            if not state.previous:
                raise ModelStoreError(
                    f"model {name} has no previous version to roll back to (active: {state.active})"
                )
            return self._rolled_back(state, state.previous[0], reason or "by command")

    def rollback_to(self, name: str, key: str, reason: str) -> ModelState:
        """Make ``key`` active again because the active version failed (health watch,
        or it could not be applied); the failed one is not kept as a rollback target."""
        with self.lock():
            return self._rolled_back(self._require(name), key, reason)

    def note_refused(self, name: str, version: str, sha256: str, reason: str) -> ModelState | None:
        """Record a refused bundle in the history of a model the store holds."""
        with self.lock():
            state = self.read(name)
            if state is None:
                return None
            entry = ModelHistoryEntry(
                at=time.time(), action="refused", version=version, sha256=sha256, reason=reason
            )
            return self._commit(self._append(state, entry))

    def mark_applied(self, name: str, generation: int) -> None:
        """The daemon has applied ``generation`` (does not bump the generation)."""
        with self.lock():
            state = self.read(name)
            if state is None or state.applied_generation >= generation:
                return
            updated = state.model_copy(update={"applied_generation": generation})
            self._write_state(updated)

    # -- state transitions ----------------------------------------------------------------

    def _require(self, name: str) -> ModelState:
        state = self.read(name)
        if state is None:
            raise ModelStoreError(
                f"the store holds no model {name!r}; it holds: {', '.join(self.names()) or 'none'}"
            )
        return state

    def _activated(
        self, state: ModelState, record: VersionRecord, origin: ModelOrigin, reason: str
    ) -> ModelState:
        if state.active == record.key:
            return state
        previous = tuple(
            key for key in (state.active, *state.previous) if key and key != record.key
        )
        updated = state.model_copy(
            update={
                "active": record.key,
                "origin": origin,
                "since": time.time(),
                "previous": tuple(dict.fromkeys(previous)),
            }
        )
        return self._with_history(updated, "activated", record, origin, reason)

    def _rolled_back(self, state: ModelState, key: str, reason: str) -> ModelState:
        record = state.record(key)
        if record is None:
            raise ModelStoreError(f"model {state.name} has no version {key!r}")
        failed = state.active
        updated = state.model_copy(
            update={
                "active": key,
                "origin": "rollback",
                "since": time.time(),
                "previous": tuple(k for k in state.previous if k not in (key, failed)),
            }
        )
        why = f"from {failed}: {reason}" if failed and failed != key else reason
        updated = self._with_history(updated, "rolled-back", record, "rollback", why)
        return self._commit(updated)

    def _with_history(
        self,
        state: ModelState,
        action: HistoryAction,
        record: VersionRecord,
        origin: ModelOrigin,
        reason: str,
    ) -> ModelState:
        entry = ModelHistoryEntry(
            at=time.time(),
            action=action,
            version=record.version,
            sha256=record.model_sha256,
            origin=origin,
            reason=reason,
        )
        return self._append(state, entry)

    def _append(self, state: ModelState, entry: ModelHistoryEntry) -> ModelState:
        history = (*state.history, entry)[-self.history_limit :]
        return state.model_copy(update={"history": history})

    def _commit(
        self, state: ModelState, before_rename: Callable[[], None] | None = None
    ) -> ModelState:
        updated = state.model_copy(update={"generation": state.generation + 1})
        self._write_state(updated, before_rename)
        return updated

    def _write_state(
        self, state: ModelState, before_rename: Callable[[], None] | None = None
    ) -> None:
        data = state.model_dump_json(by_alias=True, indent=1).encode("utf-8")
        atomic_write(self.root / state.name / STATE_FILE, data, before_rename)

    def _pruned(self, state: ModelState) -> tuple[ModelState, list[VersionRecord]]:
        """Keep ``keep_versions`` versions: the active one, the previous ones in order,
        then the most recently installed; returns the new state and what it dropped."""
        wanted = [k for k in (state.active, *state.previous) if k]
        by_age = sorted(state.versions, key=lambda v: v.installed_at, reverse=True)
        wanted += [v.key for v in by_age if v.key not in wanted]
        keep = set(wanted[: self.keep_versions])
        dropped = [v for v in state.versions if v.key not in keep]
        if not dropped:
            return state, []
        updated = state.model_copy(
            update={
                "versions": tuple(v for v in state.versions if v.key in keep),
                "previous": tuple(k for k in state.previous if k in keep),
            }
        )
        return updated, dropped
