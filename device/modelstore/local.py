"""`edgewatch models list|activate|rollback`: the model store, operated on the device.

These commands change ``state.json`` only (under the store's lock). A running daemon
notices the new generation within ``models.store_poll_s``, verifies, smoke-tests and
swaps the version live, then records the generation it applied; the command waits for
that and says what happened. With no daemon running the change applies at next start.
No TensorFlow and no interpreter here: the bundle is only verified (sha256, signature).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime

from device.bundle.reader import read_bundle
from device.config import DeviceConfig
from device.modelstore.boot import max_model_bytes, public_key_of
from device.modelstore.store import ModelState, ModelStore

log = logging.getLogger(__name__)

POLL_S = 0.1


@dataclass(frozen=True)
class ChangeResult:
    """The outcome of `activate` or `rollback`, for the terminal."""

    ok: bool
    message: str


def open_store(config: DeviceConfig) -> ModelStore:
    return ModelStore(
        config.device.state_dir / "models",
        keep_versions=config.models.keep_versions,
        history_limit=config.models.history,
    )


def _when(at: float) -> str:
    return datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S") if at else "-"


def render_list(store: ModelStore, as_json: bool = False) -> str:
    names = store.names()
    states = [s for s in (store.read(n) for n in names) if s is not None]
    if as_json:
        documents = [s.model_dump(mode="json", by_alias=True) for s in states]
        return json.dumps({"daemon_pid": store.daemon_pid(), "models": documents}, indent=2)
    pid = store.daemon_pid()
    lines = [
        f"model store {store.root}: "
        + (f"daemon running (pid {pid})" if pid else "no daemon running")
    ]
    if not states:
        lines.append("  (empty: the daemon imports each pipeline's model at its first start)")
    for state in states:
        lines.append(f"\n{state.name}  (active since {_when(state.since)}, {state.origin})")
        order = {key: i for i, key in enumerate((state.active, *state.previous))}
        for record in sorted(state.versions, key=lambda v: order.get(v.key, len(order))):
            mark = "*" if record.key == state.active else " "
            role = "active" if mark == "*" else ("previous" if record.key in order else "")
            lines.append(
                f"  {mark} {record.key:<28} {record.origin:<7} installed "
                f"{_when(record.installed_at)}  {role}"
            )
        if state.history:
            lines.append("  history:")
            for entry in state.history[-8:]:
                why = f": {entry.reason}" if entry.reason else ""
                lines.append(f"    {_when(entry.at)} {entry.action} {entry.version}{why}")
    return "\n".join(lines)


def activate(
    config: DeviceConfig, store: ModelStore, name: str, spec: str, wait_s: float
) -> ChangeResult:
    record = store.resolve(name, spec)
    # Refuse a damaged or unsigned file now rather than let the daemon find out.
    read_bundle(
        store.path_of(name, record),
        public_key=public_key_of(config.runtime),
        max_model_bytes=max_model_bytes(config.runtime),
    )
    state = store.activate(name, record.key, "activate", reason="by `edgewatch models activate`")
    return _outcome(store, state, f"{name} {record.key} is now the active version", wait_s)


def rollback(store: ModelStore, name: str, wait_s: float) -> ChangeResult:
    state = store.rollback(name, reason="by `edgewatch models rollback`")
    return _outcome(store, state, f"{name} rolled back to {state.active}", wait_s)


def _outcome(store: ModelStore, state: ModelState, done: str, wait_s: float) -> ChangeResult:
    pid = store.daemon_pid()
    if pid is None:
        return ChangeResult(True, f"{done}; no daemon is running: it applies at next start")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        current = store.read(state.name)
        if current is not None and current.applied_generation >= state.generation:
            if current.active == state.active:
                return ChangeResult(True, f"{done}; the running daemon (pid {pid}) serves it")
            reason = current.history[-1].reason if current.history else "see the daemon's log"
            return ChangeResult(
                False,
                f"{done}, but the running daemon (pid {pid}) could not apply it and still "
                f"serves {current.active}: {reason}",
            )
        time.sleep(POLL_S)
    return ChangeResult(
        False,
        f"{done}; the running daemon (pid {pid}) has not applied it within {wait_s:g} s; "
        "check its log (it applies at next start in any case)",
    )
