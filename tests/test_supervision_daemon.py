"""Supervision with faults injected into a running daemon: a hung inference, an
inference that raises, a source whose file vanishes. Each is restarted on its own while
the rest goes on, and the retained state says what is degraded."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from device.config import load_config
from device.daemon import Daemon
from device.mqtt.payloads import Event, State
from tests.conftest import Broker, start_mosquitto
from tests.helpers_mqtt import Message, Probe
from tests.test_daemon import DEMO_BUNDLE, write_config
from training.synthetic.shapes import Appearance, write_shapes_video

BASE = "edgewatch/cam1"
SCRIPT = (Appearance("circle", 0.2, 1.4), Appearance("square", 1.8, 2.8))
SUPERVISION = """
[supervision]
inference_deadline_s = 1.0
restart_min_s = 0.3
restart_max_s = 1.0
"""


@dataclass
class Running:
    daemon: Daemon
    probe: Probe
    tmp: Path


def _video(path: Path, seed: int) -> Path:
    write_shapes_video(path, seed=seed, size=(96, 96), fps=10, script=SCRIPT, duration_s=3.0)
    return path


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    broker = start_mosquitto(tmp_path)
    yield broker
    broker.process.terminate()
    broker.process.wait(5)


def _run(config_path: Path, broker: Broker, tmp: Path) -> Iterator[Running]:
    daemon = Daemon(load_config(config_path), realtime=True)
    probe = Probe(broker.host, broker.port, f"{BASE}/#")
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        assert probe.wait_for(_event_from("desk"), 30), "no event before the fault"
        yield Running(daemon, probe, tmp)
    finally:
        daemon.stop()
        thread.join(15)
        probe.close()
    assert not thread.is_alive()


@pytest.fixture
def running(broker: Broker, tmp_path: Path) -> Iterator[Running]:
    config_path = write_config(tmp_path, broker.port, _video(tmp_path / "a.mp4", 3), loop=True,
                               fps=10)  # fmt: skip
    config_path.write_text(config_path.read_text() + SUPERVISION)
    yield from _run(config_path, broker, tmp_path)


def _event_from(source: str) -> Callable[[Message], bool]:
    return lambda m: m.topic == f"{BASE}/events/{source}"


def _state_where(predicate: Callable[[State], bool]) -> Callable[[Message], bool]:
    def check(message: Message) -> bool:
        return message.topic == f"{BASE}/state" and predicate(
            State.model_validate_json(message.payload)
        )

    return check


def _degraded(part: str) -> Callable[[State], bool]:
    return lambda state: any(d.part == part for d in state.degraded)


def _healthy(state: State) -> bool:
    return not state.degraded


def test_a_hung_inference_is_abandoned_and_its_pipeline_restarted(running: Running) -> None:
    loaded = running.daemon.pipelines[0]
    runtime: Any = loaded.pipeline.runtime
    release = threading.Event()
    entered = threading.Event()
    original = runtime.invoke_native

    def hang(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(60)  # stuck in "native code" until the test lets go
        return original(*args, **kwargs)

    runtime.invoke_native = hang
    try:
        assert entered.wait(10)
        degraded = running.probe.wait_for(_state_where(_degraded("pipeline:shapes")), 15)
        assert degraded is not None, "the hang never showed in the retained state"
        detail = State.model_validate_json(degraded.payload).degraded[0].detail
        assert "has not returned" in detail
        running.probe.clear()
        # A fresh interpreter serves again: new events, and the state clears.
        assert running.probe.wait_for(_event_from("desk"), 20), "no event after the restart"
        assert running.probe.wait_for(_state_where(_healthy), 20)
        assert running.daemon.pipelines[0] is not loaded
        assert running.daemon.supervisor.health("pipeline:shapes").restarts == 1
        assert running.daemon.workers["desk"].generation == 2
    finally:
        release.set()
    # The abandoned call returns now; it must publish nothing and break nothing.
    events_before = _seqs(running.probe.messages)
    time.sleep(1.0)
    after = _seqs(running.probe.messages)
    assert after == sorted(set(after)), "the abandoned thread repeated an event"
    assert len(after) >= len(events_before)


def test_an_inference_that_raises_is_rebuilt_and_the_source_goes_on(running: Running) -> None:
    runtime: Any = running.daemon.pipelines[0].pipeline.runtime
    failures = {"left": 3}
    original = runtime.invoke_native

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise RuntimeError("injected interpreter failure")
        return original(*args, **kwargs)

    runtime.invoke_native = flaky
    degraded = running.probe.wait_for(_state_where(_degraded("pipeline:shapes")), 15)
    assert degraded is not None
    assert "injected interpreter failure" in State.model_validate_json(degraded.payload).degraded[
        0
    ].detail
    running.probe.clear()
    assert running.probe.wait_for(_event_from("desk"), 20), "no event after the rebuild"
    assert running.probe.wait_for(_state_where(_healthy), 20)
    assert running.daemon.supervisor.health("pipeline:shapes").restarts >= 1
    assert running.daemon.workers["desk"].generation == 1  # same thread throughout


def test_a_failed_source_is_restarted_while_the_other_goes_on(
    broker: Broker, tmp_path: Path
) -> None:
    desk = _video(tmp_path / "desk.mp4", 4)
    door = _video(tmp_path / "door.mp4", 5)
    config_path = tmp_path / "two.toml"
    config_path.write_text(
        f"""
[device]
id = "cam1"
state_dir = "{tmp_path / "state"}"

[mqtt]
host = "127.0.0.1"
port = {broker.port}
reconnect_min_s = 0.2
reconnect_max_s = 1.0
{SUPERVISION}
[sources.desk]
file = "{desk}"
loop = true
fps = 10

[sources.door]
file = "{door}"
loop = true
fps = 10

[pipelines.shapes]
source = "desk"
model = "{DEMO_BUNDLE}"
threshold = 0.6

[pipelines.door_shapes]
source = "door"
model = "{DEMO_BUNDLE}"
threshold = 0.6
"""
    )
    for running in _run(config_path, broker, tmp_path):
        hidden = door.with_suffix(".away")
        door.rename(hidden)  # the next pass of the loop finds no file
        degraded = running.probe.wait_for(_state_where(_degraded("source:door")), 20)
        assert degraded is not None
        assert "does not exist" in State.model_validate_json(degraded.payload).degraded[0].detail
        running.probe.clear()
        assert running.probe.wait_for(_event_from("desk"), 15), "desk stopped with door"
        hidden.rename(door)
        assert running.probe.wait_for(_state_where(_healthy), 30)
        running.probe.clear()
        assert running.probe.wait_for(_event_from("door"), 20), "door never came back"
        assert running.daemon.supervisor.health("source:door").restarts >= 1


def _seqs(messages: list[Message]) -> list[int]:
    return [
        Event.model_validate_json(m.payload).seq
        for m in messages
        if m.topic == f"{BASE}/events/desk"
    ]
