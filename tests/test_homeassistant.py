"""Home Assistant discovery: configs checked against the rules Home Assistant documents
for MQTT discovery, templates rendered with Jinja2 the way Home Assistant renders them,
republishing on Home Assistant's birth message and removal, through a real mosquitto."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import jinja2
import pytest

from device.cli import main
from device.config import load_config
from device.daemon import Daemon
from device.homeassistant import (
    PipelineInfo,
    build_entities,
    discovery_messages,
)
from device.mqtt.topics import Topics
from tests.conftest import Broker
from tests.helpers_mqtt import Probe
from tests.test_daemon import write_config
from training.synthetic.shapes import Appearance, write_shapes_video

TOPICS = Topics("edgewatch", "pi-porch")
PIPELINES = (
    PipelineInfo(name="people", source="porch", reportable=("person", "cat")),
    PipelineInfo(name="pets", source="porch", reportable=("cat", "dog's toy")),
    PipelineInfo(name="garage", source="garage", reportable=("car",), snapshots=True),
)
# Keys Home Assistant's MQTT integration documents for each component (the subset an
# edgewatch config may use); anything else would be a typo Home Assistant rejects.
COMMON_KEYS = {
    "name", "unique_id", "object_id", "device", "origin", "availability", "state_topic",
    "value_template", "qos", "icon", "entity_category",
}  # fmt: skip
ALLOWED_KEYS = {
    "binary_sensor": COMMON_KEYS | {"payload_on", "payload_off", "device_class"},
    "sensor": COMMON_KEYS
    | {"state_class", "unit_of_measurement", "device_class", "suggested_display_precision"},
    "update": COMMON_KEYS,
    # The MQTT camera reads raw image payloads from `topic`; no state or template.
    "camera": {
        "name", "unique_id", "object_id", "device", "origin", "availability", "topic", "icon",
    },
}  # fmt: skip
REQUIRED_KEYS = {
    "binary_sensor": {"state_topic"},
    "sensor": {"state_topic"},
    "update": {"state_topic"},  # one of state_topic/command_topic; ours reads the state
    "camera": {"topic"},
}
TOPIC_PATTERN = re.compile(
    r"^homeassistant/(binary_sensor|sensor|update|camera)/([A-Za-z0-9_-]+)/([A-Za-z0-9_-]+)"
    r"/config$"
)


def configs() -> list[tuple[str, dict[str, Any]]]:
    entities = build_entities("pi-porch", TOPICS, PIPELINES, with_temperature=True)
    return [
        (m.topic, json.loads(m.payload))
        for m in discovery_messages("homeassistant", "pi-porch", entities)
    ]


def render(template: str, payload: dict[str, Any]) -> str:
    """As Home Assistant does: value_json is the parsed payload; the result is stripped."""
    environment = jinja2.Environment()
    environment.filters["tojson"] = json.dumps
    return environment.from_string(template).render(value_json=payload).strip()


def test_discovery_configs_follow_home_assistants_rules() -> None:
    found = configs()
    unique_ids = [config["unique_id"] for _, config in found]
    assert len(unique_ids) == len(set(unique_ids)), "unique ids must be unique"
    topics = [topic for topic, _ in found]
    assert len(topics) == len(set(topics))
    for topic, config in found:
        match = TOPIC_PATTERN.match(topic)
        assert match, topic
        component, node_id, object_id = match.groups()
        assert node_id == "pi-porch" and object_id == config["object_id"]
        assert set(config) <= ALLOWED_KEYS[component], set(config) - ALLOWED_KEYS[component]
        assert REQUIRED_KEYS[component] <= set(config)
        assert config["unique_id"].startswith("edgewatch_pi-porch_")
        assert config["availability"] == [
            {
                "topic": "edgewatch/pi-porch/availability",
                "payload_available": "online",
                "payload_not_available": "offline",
            }
        ]
        device = config["device"]
        assert device["identifiers"] == ["edgewatch_pi-porch"]
        assert device["model"] == "edgewatch" and device["name"] == "pi-porch"
        assert device["sw_version"]
        assert config["origin"]["name"] == "edgewatch"
        assert config.get("qos", 0) in (0, 1)
        if component == "sensor":
            assert config["state_class"] == "measurement"  # numeric: '' is ignored
    by_id = {config["unique_id"]: (topic, config) for topic, config in found}
    # One presence and one score entity per source and label, shared across pipelines.
    labels = {"porch_person", "porch_cat", "porch_dog_s_toy", "garage_car"}
    for label in labels:
        assert by_id[f"edgewatch_pi-porch_{label}_presence"][0].startswith(
            "homeassistant/binary_sensor/"
        )
        assert f"edgewatch_pi-porch_{label}_score" in by_id
    assert sum(1 for _, c in found if c["unique_id"].endswith("_presence")) == len(labels)
    assert {"edgewatch_pi-porch_porch_fps", "edgewatch_pi-porch_garage_fps"} <= set(by_id)
    for pipeline in ("people", "pets", "garage"):
        topic, config = by_id[f"edgewatch_pi-porch_{pipeline}_model"]
        assert topic.startswith("homeassistant/update/")
        assert config["state_topic"] == "edgewatch/pi-porch/state"
    # A camera for the source whose pipeline makes event snapshots, and for no other.
    cameras = [(topic, c) for topic, c in found if topic.startswith("homeassistant/camera/")]
    assert [c["unique_id"] for _, c in cameras] == ["edgewatch_pi-porch_garage_event_snapshot"]
    assert cameras[0][1]["topic"] == "edgewatch/pi-porch/events/garage/snapshot"
    presence = by_id["edgewatch_pi-porch_porch_cat_presence"][1]
    assert presence["state_topic"] == "edgewatch/pi-porch/events/porch"
    assert (presence["payload_on"], presence["payload_off"]) == ("ON", "OFF")


def event(label: str, type_: str, score: float = 0.9) -> dict[str, Any]:
    return {"label": label, "type": type_, "score": score, "source": "porch"}


def test_templates_render_what_home_assistant_expects() -> None:
    by_id = {config["unique_id"]: config for _, config in configs()}
    presence = by_id["edgewatch_pi-porch_porch_dog_s_toy_presence"]["value_template"]
    assert render(presence, event("dog's toy", "start")) == "ON"
    assert render(presence, event("dog's toy", "update")) == "ON"
    assert render(presence, event("dog's toy", "end")) == "OFF"
    # Another label's event must not touch this entity: '' is ignored by Home
    # Assistant, whereas 'None' would make the binary sensor unknown.
    assert render(presence, event("cat", "start")) == ""
    assert render(presence, event("cat", "end")) == ""

    score = by_id["edgewatch_pi-porch_porch_cat_score"]["value_template"]
    assert render(score, event("cat", "update", 0.83)) == "0.83"
    assert render(score, event("person", "update")) == ""

    stats = {"sources": [{"name": "porch", "fps": 4.9}, {"name": "garage", "fps": 2.0}],
             "cpu_percent": 31.5, "temperature_c": None}  # fmt: skip
    fps = by_id["edgewatch_pi-porch_garage_fps"]["value_template"]
    assert render(fps, stats) == "2.0"
    assert render(fps, {"sources": []}) == ""
    assert render(by_id["edgewatch_pi-porch_cpu"]["value_template"], stats) == "31.5"
    temperature = by_id["edgewatch_pi-porch_temperature"]["value_template"]
    assert render(temperature, stats) == ""
    assert render(temperature, {**stats, "temperature_c": 52.1}) == "52.1"

    state = {"pipelines": [{"name": "pets", "model": {"name": "petnet", "version": "1.2.0"}}]}
    update = by_id["edgewatch_pi-porch_pets_model"]["value_template"]
    assert json.loads(render(update, state)) == {
        "installed_version": "1.2.0",
        "latest_version": "1.2.0",
        "title": "petnet",
    }
    assert render(by_id["edgewatch_pi-porch_garage_model"]["value_template"], state) == ""


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("video") / "scene.mp4"
    script = (Appearance("circle", 0.5, 2.0),)
    write_shapes_video(path, seed=5, size=(96, 96), fps=10, script=script, duration_s=3.0)
    return path


def test_birth_message_republishes_and_ha_remove_clears(
    mosquitto: Broker, video: Path, tmp_path: Path
) -> None:
    config_path = write_config(tmp_path, mosquitto.port, video, loop=True, fps=10)
    daemon = Daemon(load_config(config_path), realtime=True, config_path=config_path)
    expected = {m.topic for m in discovery_messages("homeassistant", "cam1", daemon.entities())}
    assert len(expected) >= 6  # presence + score per label, fps, model, cpu
    runner = threading.Thread(target=daemon.run, daemon=True)
    probe = Probe(mosquitto.host, mosquitto.port, "homeassistant/+/cam1/+/config")
    runner.start()
    try:

        def configs_seen() -> set[str]:
            return {m.topic for m in probe.messages if m.payload}

        assert probe.wait_for(lambda m: False, 3) is None  # let the configs arrive
        assert configs_seen() == expected
        first = {m.topic: m.payload for m in probe.messages}

        probe.clear()
        probe.publish("homeassistant/status", "offline")  # not a birth: nothing happens
        probe.wait_for(lambda m: False, 1)
        assert probe.messages == []
        probe.publish("homeassistant/status", "online")
        probe.wait_for(lambda m: False, 2)
        assert configs_seen() == expected
        assert {m.topic: m.payload for m in probe.messages} == first
        assert daemon.discovery is not None and daemon.discovery.births == 1
    finally:
        daemon.stop()
        runner.join(10)
        probe.close()

    # Retained on the broker, so a Home Assistant that starts later sees them ...
    late = Probe(mosquitto.host, mosquitto.port, "homeassistant/#")
    late.wait_for(lambda m: False, 1)
    assert {m.topic for m in late.messages if m.retain} == expected
    late.close()
    # ... until `edgewatch ha remove` clears every one.
    assert main(["ha", "remove", "--config", str(config_path)]) == 0
    after = Probe(mosquitto.host, mosquitto.port, "homeassistant/#")
    after.wait_for(lambda m: False, 1)
    assert [m for m in after.messages if m.payload] == []
    after.close()
