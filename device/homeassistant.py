"""Home Assistant MQTT discovery: the device and its entities appear in Home Assistant
without any YAML.

Every entity reads topics edgewatch publishes anyway (events, stats, state) through a
``value_template``, so discovery adds configs but no extra state traffic. Templates that
see a message meant for another entity (an event about another label, say) render an
empty string: Home Assistant documents that an empty result is ignored by binary sensors
and by numeric sensors, whereas ``None`` would set the entity to *unknown*.

Configs are retained and republished whenever Home Assistant announces itself
(``<discovery prefix>/status`` = ``online``), because a Home Assistant that restarted
with a broker that lost its retained messages would otherwise forget the device.
``edgewatch ha remove`` publishes an empty retained config for each entity, which is
how discovery deletes an entity.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import BaseModel, ConfigDict

from device import __version__
from device.audio.config import KeywordPipelineConfig
from device.bundle.manifest import ClassificationDecoding, HeatmapDecoding
from device.config import ClassificationPipeline, DeviceConfig
from device.errors import EdgewatchError
from device.mqtt.client_options import make_client
from device.mqtt.publisher import MqttPublisher
from device.mqtt.topics import OFFLINE, ONLINE, Topics
from device.pipelines.detection_config import DetectionPipelineConfig

log = logging.getLogger(__name__)

BIRTH_PAYLOAD = b"online"


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HaDevice(_Config):
    """Groups the entities under one device in Home Assistant's device registry."""

    identifiers: tuple[str, ...]
    name: str
    sw_version: str
    model: str = "edgewatch"
    manufacturer: str = "edgewatch"


class HaOrigin(_Config):
    """Which software published the config; Home Assistant shows it in its logs."""

    name: str = "edgewatch"
    sw_version: str = __version__


class HaAvailability(_Config):
    topic: str
    payload_available: str = ONLINE
    payload_not_available: str = OFFLINE


class _EntityBase(_Config):
    """Keys every edgewatch entity carries."""

    component: ClassVar[str]

    name: str
    unique_id: str
    object_id: str
    device: HaDevice
    origin: HaOrigin
    availability: tuple[HaAvailability, ...]
    icon: str | None = None


class _Entity(_EntityBase):
    """An entity whose state is rendered from one of the JSON topics."""

    state_topic: str
    value_template: str
    qos: Literal[0, 1] = 1
    entity_category: Literal["diagnostic", "config"] | None = None


class BinarySensorConfig(_Entity):
    component: ClassVar[str] = "binary_sensor"

    payload_on: str = "ON"
    payload_off: str = "OFF"
    device_class: str | None = None


class SensorConfig(_Entity):
    component: ClassVar[str] = "sensor"

    #: Set on every edgewatch sensor: it makes Home Assistant expect a number, which is
    #: what makes it ignore the empty string our templates render for other messages.
    state_class: Literal["measurement"] = "measurement"
    unit_of_measurement: str | None = None
    device_class: str | None = None
    suggested_display_precision: int | None = None


class UpdateConfig(_Entity):
    """The active model's version; the template renders the JSON form of the update
    entity's state (installed_version, latest_version, title)."""

    component: ClassVar[str] = "update"


class CameraConfig(_EntityBase):
    """The latest event snapshot of a source: Home Assistant's MQTT camera shows each
    raw JPEG published on ``topic`` (the retained ``events/<source>/snapshot``), so the
    picture of the last event is there even right after Home Assistant restarts."""

    component: ClassVar[str] = "camera"

    topic: str


Entity = BinarySensorConfig | SensorConfig | UpdateConfig | CameraConfig


@dataclass(frozen=True)
class PipelineInfo:
    """What discovery needs to know about one pipeline."""

    name: str
    source: str
    reportable: tuple[str, ...]
    #: A detection pipeline that publishes event snapshots.
    snapshots: bool = False


@dataclass(frozen=True)
class DiscoveryMessage:
    topic: str
    payload: bytes


def object_id(*parts: str) -> str:
    """A topic level and entity id from names: letters, digits, `_` and `-` only."""
    return "_".join(re.sub(r"[^A-Za-z0-9_-]", "_", part) for part in parts)


def _literal(text: str) -> str:
    """A Jinja string literal for ``text`` (a label may contain quotes)."""
    return json.dumps(text)


def presence_template(label: str) -> str:
    quoted = _literal(label)
    return (
        f"{{{{ ('ON' if value_json.type in ['start', 'update'] else "
        f"('OFF' if value_json.type == 'end' else '')) "
        f"if value_json.label == {quoted} else '' }}}}"
    )


def score_template(label: str) -> str:
    return f"{{{{ value_json.score if value_json.label == {_literal(label)} else '' }}}}"


def source_stat_template(source: str, field: str) -> str:
    return (
        f"{{{{ value_json.sources | selectattr('name', 'equalto', {_literal(source)}) "
        f"| map(attribute='{field}') | first | default('') }}}}"
    )


def model_template(pipeline: str) -> str:
    return (
        f"{{% set p = value_json.pipelines | selectattr('name', 'equalto', "
        f"{_literal(pipeline)}) | first %}}"
        "{% if p is defined %}{{ {'installed_version': p.model.version, "
        "'latest_version': p.model.version, 'title': p.model.name} | tojson }}{% endif %}"
    )


def build_entities(
    device_id: str,
    topics: Topics,
    pipelines: Sequence[PipelineInfo],
    *,
    with_temperature: bool = False,
) -> list[Entity]:
    """Every entity of a device: per source and reportable label a presence binary
    sensor and a score sensor, per source an fps sensor (and a camera showing the last
    event's snapshot where a pipeline makes them), per pipeline an update entity for its
    model, and device-wide CPU (and temperature where readable)."""
    device = HaDevice(
        identifiers=(f"edgewatch_{device_id}",), name=device_id, sw_version=__version__
    )
    common = {
        "device": device,
        "origin": HaOrigin(),
        "availability": (HaAvailability(topic=topics.availability),),
    }
    entities: list[Entity] = []
    seen_labels: set[tuple[str, str]] = set()
    sources: list[str] = []
    for pipeline in pipelines:
        if pipeline.source not in sources:
            sources.append(pipeline.source)
        for label in pipeline.reportable:
            if (pipeline.source, label) in seen_labels:
                continue  # two pipelines on one source with one label: one entity
            seen_labels.add((pipeline.source, label))
            base = object_id(pipeline.source, label)
            entities.append(
                BinarySensorConfig(
                    name=f"{pipeline.source} {label}",
                    unique_id=f"edgewatch_{device_id}_{base}_presence",
                    object_id=base,
                    state_topic=topics.events(pipeline.source),
                    value_template=presence_template(label),
                    icon="mdi:eye",
                    **common,
                )
            )
            entities.append(
                SensorConfig(
                    name=f"{pipeline.source} {label} score",
                    unique_id=f"edgewatch_{device_id}_{base}_score",
                    object_id=f"{base}_score",
                    state_topic=topics.events(pipeline.source),
                    value_template=score_template(label),
                    suggested_display_precision=2,
                    icon="mdi:percent",
                    **common,
                )
            )
    for source in sources:
        entities.append(
            SensorConfig(
                name=f"{source} fps",
                unique_id=f"edgewatch_{device_id}_{object_id(source)}_fps",
                object_id=f"{object_id(source)}_fps",
                state_topic=topics.stats,
                value_template=source_stat_template(source, "fps"),
                unit_of_measurement="fps",
                suggested_display_precision=1,
                entity_category="diagnostic",
                qos=0,
                **common,
            )
        )
    with_snapshots = {p.source for p in pipelines if p.snapshots}
    for source in (s for s in sources if s in with_snapshots):
        entities.append(
            CameraConfig(
                name=f"{source} last event",
                unique_id=f"edgewatch_{device_id}_{object_id(source)}_event_snapshot",
                object_id=f"{object_id(source)}_event_snapshot",
                topic=topics.event_snapshot(source),
                icon="mdi:cctv",
                **common,
            )
        )
    for pipeline in pipelines:
        entities.append(
            UpdateConfig(
                name=f"{pipeline.name} model",
                unique_id=f"edgewatch_{device_id}_{object_id(pipeline.name)}_model",
                object_id=f"{object_id(pipeline.name)}_model",
                state_topic=topics.state,
                value_template=model_template(pipeline.name),
                **common,
            )
        )
    entities.append(
        SensorConfig(
            name="CPU",
            unique_id=f"edgewatch_{device_id}_cpu",
            object_id="cpu",
            state_topic=topics.stats,
            value_template="{{ value_json.cpu_percent }}",
            unit_of_measurement="%",
            entity_category="diagnostic",
            qos=0,
            **common,
        )
    )
    if with_temperature:
        entities.append(
            SensorConfig(
                name="temperature",
                unique_id=f"edgewatch_{device_id}_temperature",
                object_id="temperature",
                state_topic=topics.stats,
                value_template=(
                    "{{ value_json.temperature_c if value_json.temperature_c is not none else '' }}"
                ),
                unit_of_measurement="°C",
                device_class="temperature",
                entity_category="diagnostic",
                qos=0,
                **common,
            )
        )
    return entities


def discovery_topic(prefix: str, device_id: str, entity: Entity) -> str:
    return f"{prefix}/{entity.component}/{device_id}/{entity.object_id}/config"


def discovery_messages(
    prefix: str, device_id: str, entities: Iterable[Entity]
) -> list[DiscoveryMessage]:
    return [
        DiscoveryMessage(
            discovery_topic(prefix, device_id, entity),
            entity.model_dump_json(exclude_none=True).encode("utf-8"),
        )
        for entity in entities
    ]


def removal_messages(topics: Iterable[str]) -> list[DiscoveryMessage]:
    """Empty retained configs: Home Assistant deletes those entities."""
    return [DiscoveryMessage(topic, b"") for topic in topics]


class HomeAssistantDiscovery:
    """Publishes a device's discovery configs now, on every Home Assistant birth
    message, and again (with removals) when the entity set changes."""

    def __init__(self, publisher: MqttPublisher, prefix: str, device_id: str) -> None:
        self._publisher = publisher
        self._prefix = prefix
        self._device_id = device_id
        self._lock = threading.Lock()
        self._entities: list[Entity] = []
        self._published: set[str] = set()
        self.births = 0

    @property
    def status_topic(self) -> str:
        return f"{self._prefix}/status"

    def start(self, entities: Sequence[Entity]) -> None:
        self._publisher.subscribe(self.status_topic, self._on_status)
        self.update(entities)

    def update(self, entities: Sequence[Entity]) -> None:
        """Publish ``entities``; clear configs of entities that are no longer there."""
        messages = discovery_messages(self._prefix, self._device_id, entities)
        with self._lock:
            gone = self._published - {m.topic for m in messages}
            self._entities = list(entities)
            self._published = {m.topic for m in messages}
        for message in removal_messages(sorted(gone)) + messages:
            self._publisher.publish_raw(message.topic, message.payload, qos=1, retain=True)
        log.info(
            "Home Assistant discovery: %d entities published, %d removed",
            len(messages),
            len(gone),
        )

    def _on_status(self, topic: str, payload: bytes) -> None:
        if payload.strip() != BIRTH_PAYLOAD:
            return
        self.births += 1
        with self._lock:
            entities = list(self._entities)
        log.info("Home Assistant came online; republishing discovery")
        self.update(entities)


def pipelines_from_config(config: DeviceConfig) -> list[PipelineInfo]:
    """The reportable labels of each pipeline, read from its bundle's manifest (no model
    is loaded): what ``edgewatch ha remove`` needs without running the daemon."""
    from device.bundle.reader import read_bundle

    max_bytes = int(config.runtime.max_model_mb * 1024 * 1024)
    infos = []
    for name, pipeline in config.pipelines.items():
        if not isinstance(
            pipeline, ClassificationPipeline | KeywordPipelineConfig | DetectionPipelineConfig
        ):
            # Anomaly pipelines report one label (the daemon's record sources say so too).
            infos.append(PipelineInfo(name=name, source=pipeline.source, reportable=("anomaly",)))
            continue
        manifest = read_bundle(pipeline.model, max_model_bytes=max_bytes).manifest
        decoding = manifest.decoding
        background: tuple[str, ...] = ()
        if isinstance(decoding, ClassificationDecoding):
            background = decoding.background_labels
        elif isinstance(decoding, HeatmapDecoding):
            background = (decoding.background_label,)
        reportable = tuple(
            label
            for label in manifest.labels
            if label not in background and label not in pipeline.ignore_labels
        )
        snapshots = isinstance(pipeline, DetectionPipelineConfig) and pipeline.snapshot.enabled
        infos.append(
            PipelineInfo(
                name=name, source=pipeline.source, reportable=reportable, snapshots=snapshots
            )
        )
    return infos


def remove_device(config: DeviceConfig, *, scan_s: float = 1.0, timeout_s: float = 10.0) -> int:
    """Clear every discovery config of the device; returns how many topics were cleared.

    The topics are those the current config gives plus any retained config found on
    the broker under the device's node id (entities of an older config). A device
    account may not read those (the shipped ACL lets it read only the birth topic);
    then the scan finds nothing and the config's entities are what is removed.
    """
    prefix = config.homeassistant.discovery_prefix
    device_id = config.device.id
    topics = Topics(config.mqtt.prefix, device_id)
    entities = build_entities(
        device_id, topics, pipelines_from_config(config), with_temperature=True
    )
    wanted = {m.topic for m in discovery_messages(prefix, device_id, entities)}
    client = make_client(f"edgewatch-{device_id}-ha-remove", config=config.mqtt, role="ha remove")
    connected = threading.Event()
    found: set[str] = set()
    lock = threading.Lock()

    def on_connect(
        client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        if not reason.is_failure:
            client.subscribe(f"{prefix}/+/{device_id}/+/config", qos=1)
            connected.set()

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.retain and message.payload:
            with lock:
                found.add(message.topic)

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect_async(config.mqtt.host, config.mqtt.port, keepalive=config.mqtt.keepalive_s)
    client.loop_start()
    try:
        if not connected.wait(timeout_s):
            raise EdgewatchError(
                f"MQTT broker {config.mqtt.host}:{config.mqtt.port} did not accept a "
                f"connection within {timeout_s:.0f} s; check [mqtt] in the config"
            )
        threading.Event().wait(scan_s)  # retained configs arrive right after SUBACK
        with lock:
            clear = sorted(wanted | found)
        infos = [client.publish(topic, b"", qos=1, retain=True) for topic in clear]
        for info in infos:
            info.wait_for_publish(timeout_s)
        log.info("removed %d Home Assistant entities of %s", len(clear), device_id)
        return len(clear)
    finally:
        client.disconnect()
        client.loop_stop()
