"""`edgewatch push`: send a bundle to a device or a group over MQTT and wait for verdicts.

The bundle goes in chunks (128 KiB by default) so that a stock mosquitto, a slow uplink
or a small broker limit never has to carry it in one message. The transfer id is the
first 32 hex digits of the bundle's sha256: pushing the same file again continues the
same transfer, and a device that already installed it answers with its verdict at once.

The device answers on ``<prefix>/<device>/models/push/progress`` with what it has
received and the first missing chunks; the pusher first sends one chunk and reads the
answer (so a re-run sends only what is missing), sends the rest, then resends whatever
each device still misses once its count stops growing. If the connection to the broker
drops, paho reconnects and the same progress messages say what to send again. A group
push sends each chunk once to ``<prefix>/group/<group>/models/push`` and resends
missing chunks to each device's own topic.

Exit codes (also in docs/models.md): 0 every device installed the bundle; 2 bad
arguments (unreadable bundle, bad options); 3 a device refused it (each reason is
printed); 4 a device did not answer in time; 5 the broker is unreachable; 6 no device
of the group was found. This module must not import TensorFlow.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import ValidationError

from device.config import MqttSection, load_config
from device.errors import EdgewatchError
from device.modelstore.transfer import ZIP_MAGIC, encode_chunk, transfer_id_of
from device.mqtt.client_options import make_client
from device.mqtt.payloads import PushChunk, PushProgress, State
from device.mqtt.topics import ONLINE, Topics, parse_device_topic

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_BAD_ARGUMENTS = 2
EXIT_REFUSED = 3
EXIT_NO_ANSWER = 4
EXIT_UNREACHABLE = 5
EXIT_NO_DEVICES = 6

FINAL_STATES = ("installed", "refused")


@dataclass(frozen=True)
class PushOptions:
    chunk_bytes: int = 128 * 1024
    #: For the whole push, from connecting to the last verdict.
    timeout_s: float = 120.0
    #: How long to collect retained states when pushing to a group.
    discover_s: float = 2.0
    progress: bool = True
    connect_timeout_s: float = 10.0
    #: Chunk publishes not yet acknowledged by the broker, at most.
    window: int = 8
    #: Wait for the first chunk's answer this long before sending the rest.
    probe_s: float = 2.0
    #: A device whose received count has not grown for this long gets its missing chunks.
    resend_after_s: float = 1.5
    #: Ask again (resend a chunk) after this long without any answer.
    ping_s: float = 4.0


@dataclass(frozen=True)
class DeviceResult:
    device: str
    #: installed, refused, expired (the device gave up waiting) or no-answer.
    state: str
    reason: str


@dataclass(frozen=True)
class PushOutcome:
    transfer_id: str
    results: tuple[DeviceResult, ...]
    exit_code: int
    chunks_sent: int
    reconnects: int
    #: Chunks the first answer said each device already had (a resumed transfer).
    resumed_from: dict[str, int] = field(default_factory=dict)


@dataclass
class _Device:
    name: str
    progress: PushProgress | None = None
    answered_at: float = 0.0
    grew_at: float = 0.0
    received: int = 0
    asked_at: float = 0.0


def exit_code_of(results: Sequence[DeviceResult]) -> int:
    states = {r.state for r in results}
    if states <= {"installed"}:
        return EXIT_OK
    if "refused" in states:
        return EXIT_REFUSED
    return EXIT_NO_ANSWER


class BundlePusher:
    """One push session over one MQTT connection."""

    def __init__(
        self,
        data: bytes,
        host: str,
        port: int,
        *,
        prefix: str = "edgewatch",
        mqtt_config: MqttSection | None = None,
        options: PushOptions | None = None,
    ) -> None:
        if not data.startswith(ZIP_MAGIC):
            raise EdgewatchError("this is not a .ewm bundle (not a zip archive)")
        self.data = data
        self.host = host
        self.port = port
        self.prefix = prefix
        self.options = options or PushOptions()
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.transfer_id = transfer_id_of(self.sha256)
        size = max(1, self.options.chunk_bytes)
        self.count = max(1, math.ceil(len(data) / size))
        self._chunk_size = size
        #: Called with each chunk index after it was handed to the client (tests cut
        #: the connection from here).
        self.on_chunk_sent: Callable[[int], None] | None = None
        self.client = make_client(
            f"edgewatch-push-{os.getpid()}-{time.monotonic_ns() % 1_000_000}",
            config=mqtt_config,
            role="pusher",
        )
        if mqtt_config is None:
            self.client.reconnect_delay_set(min_delay=1, max_delay=5)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self._cond = threading.Condition()
        self._connected = threading.Event()
        self._subscriptions: list[str] = []
        self._devices: dict[str, _Device] = {}
        self._states: dict[str, State] = {}
        self._availability: dict[str, str] = {}
        self._connects = 0
        self.chunks_sent = 0
        self._bar: Any = None

    # -- connection ---------------------------------------------------------------------

    def connect(self) -> bool:
        """True once connected; False if the broker cannot be reached in time."""
        try:
            self.client.connect_async(self.host, self.port, keepalive=30)
        except (OSError, ValueError) as exc:
            log.error("cannot connect to %s:%d: %s", self.host, self.port, exc)
            return False
        self.client.loop_start()
        return self._connected.wait(min(self.options.connect_timeout_s, self.options.timeout_s))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        if self._bar is not None:
            self._bar.close()

    @property
    def reconnects(self) -> int:
        return max(0, self._connects - 1)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            log.error("the broker refused the connection: %s", reason)
            return
        with self._cond:
            self._connects += 1
            topics = list(self._subscriptions)
        if topics:
            client.subscribe([(topic, 1) for topic in topics])
        if self._connects > 1:
            log.info("reconnected to the broker; continuing push %s", self.transfer_id)
        self._connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self._connected.clear()
        log.info("lost the broker (%s); reconnecting", reason)

    def _subscribe(self, topics: Sequence[str]) -> None:
        with self._cond:
            self._subscriptions.extend(topics)
        result, _ = self.client.subscribe([(topic, 1) for topic in topics])
        if result != mqtt.MQTT_ERR_SUCCESS:
            log.debug("subscribe deferred to the next connection (%s)", result)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        parsed = parse_device_topic(self.prefix, message.topic)
        if parsed is None:
            return
        device, rest = parsed
        payload = bytes(message.payload)
        with self._cond:
            if rest == "models/push/progress":
                self._on_progress(device, payload)
            elif rest == "state":
                with contextlib.suppress(ValidationError):
                    self._states[device] = State.model_validate_json(payload)
            elif rest == "availability":
                self._availability[device] = payload.decode("utf-8", "replace")
            self._cond.notify_all()

    def _on_progress(self, device: str, payload: bytes) -> None:
        entry = self._devices.get(device)
        if entry is None:
            return
        try:
            progress = PushProgress.model_validate_json(payload)
        except ValidationError:
            return
        if progress.transfer_id != self.transfer_id:
            return
        now = time.monotonic()
        entry.progress = progress
        entry.answered_at = now
        if progress.received > entry.received:
            entry.grew_at = now
            if self._bar is not None:
                self._bar.update(progress.received - entry.received)
            entry.received = progress.received
        if progress.state in FINAL_STATES and self._bar is not None:
            self._bar.update(max(0, self.count - entry.received))
            entry.received = self.count

    # -- discovery ------------------------------------------------------------------------

    def discover(self, group: str) -> list[str]:
        """Devices whose retained state lists ``group`` and that are not offline."""
        self._subscribe([f"{self.prefix}/+/state", f"{self.prefix}/+/availability"])
        time.sleep(self.options.discover_s)  # retained messages arrive at once, or never
        self.client.unsubscribe([f"{self.prefix}/+/state", f"{self.prefix}/+/availability"])
        with self._cond:
            self._subscriptions.clear()
            members = []
            for device, state in sorted(self._states.items()):
                if group not in state.groups:
                    continue
                if self._availability.get(device, ONLINE) != ONLINE:
                    log.warning("device %s of group %s is offline; skipped", device, group)
                    continue
                members.append(device)
        return members

    # -- pushing --------------------------------------------------------------------------

    def _chunk(self, index: int) -> bytes:
        offset = index * self._chunk_size
        header = PushChunk(
            transfer_id=self.transfer_id,
            index=index,
            count=self.count,
            offset=offset,
            size=len(self.data),
            sha256=self.sha256,
        )
        return encode_chunk(header, self.data[offset : offset + self._chunk_size])

    def _send(self, topic: str, indices: Sequence[int], deadline: float) -> None:
        """Publish chunks with at most ``window`` unacknowledged; waits out a lost
        connection (paho reconnects) until ``deadline``."""
        in_flight: list[mqtt.MQTTMessageInfo] = []
        for index in indices:
            while not self._connected.is_set():
                if time.monotonic() >= deadline:
                    return
                self._connected.wait(0.2)
            info = self.client.publish(topic, self._chunk(index), qos=1)
            self.chunks_sent += 1
            in_flight.append(info)
            if self.on_chunk_sent is not None:
                self.on_chunk_sent(index)
            while len(in_flight) >= self.options.window:
                oldest = in_flight[0]
                if not self._connected.is_set() or _settled(oldest):
                    in_flight.pop(0)
                    continue
                if time.monotonic() >= deadline:
                    return
                oldest.wait_for_publish(0.2)

    def push(self, devices: Sequence[str], group: str | None = None) -> PushOutcome:
        """Send the bundle to ``devices`` (through the group topic when ``group``)."""
        opts = self.options
        deadline = time.monotonic() + opts.timeout_s
        topics = {d: Topics(self.prefix, d) for d in devices}
        with self._cond:
            self._devices = {d: _Device(d) for d in devices}
        self._subscribe([t.models_push_progress for t in topics.values()])
        first_topic = (
            Topics(self.prefix, "_").group_models_push(group)
            if group
            else topics[devices[0]].models_push
        )
        if opts.progress:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.count * len(devices),
                unit="chunk",
                desc=f"push {self.transfer_id[:8]}",
                file=sys.stderr,
            )
        # 1. One chunk, then its answer says whether devices already hold some.
        self._send(first_topic, [0], deadline)
        self._wait_answers(time.monotonic() + opts.probe_s, deadline)
        resumed = {d.name: d.received for d in self._devices.values() if d.received > 1}
        # 2. Everything some device may still miss, once, on the first topic.
        needed: set[int] = set()
        with self._cond:
            for entry in self._devices.values():
                needed |= self._needed(entry)
        self._send(first_topic, sorted(needed - {0}), deadline)  # 0 went with the probe
        sent_at = time.monotonic()
        with self._cond:
            for entry in self._devices.values():
                entry.asked_at = sent_at
                entry.grew_at = max(entry.grew_at, sent_at)
        # 3. Per device: resend what is missing until every device has a verdict.
        while time.monotonic() < deadline:
            with self._cond:
                pending = [d for d in self._devices.values() if not self._final(d)]
                if not pending:
                    break
                self._cond.wait(0.2)
                actions = [(d, self._next_action(d)) for d in pending]
            for entry, indices in actions:
                if indices:
                    self._send(topics[entry.name].models_push, indices, deadline)
                    with self._cond:
                        entry.asked_at = entry.grew_at = time.monotonic()
        return self._outcome(resumed)

    def _wait_answers(self, until: float, deadline: float) -> None:
        with self._cond:
            while time.monotonic() < min(until, deadline):
                if all(d.progress is not None for d in self._devices.values()):
                    return
                self._cond.wait(0.1)

    def _needed(self, entry: _Device) -> set[int]:
        progress = entry.progress
        if progress is None or progress.state not in ("receiving", "refused", "expired"):
            return set(range(self.count)) if progress is None else set()
        if progress.state == "refused" and progress.count == 0:
            return set()
        missing = set(progress.missing)
        if progress.count - progress.received > len(progress.missing):
            # The list is capped: everything after its last entry may be missing too.
            missing |= set(range(max(progress.missing, default=-1) + 1, self.count))
        return missing

    @staticmethod
    def _final(entry: _Device) -> bool:
        progress = entry.progress
        return progress is not None and progress.state in FINAL_STATES

    def _next_action(self, entry: _Device) -> list[int]:
        """What to (re)send to one device now; [] for nothing (caller holds the lock)."""
        now = time.monotonic()
        progress = entry.progress
        if progress is None or now - entry.answered_at >= self.options.ping_s:
            if now - entry.asked_at >= self.options.ping_s:
                return [0]  # any chunk gets an answer (a repeat always does)
            return []
        if progress.state == "expired":
            return list(range(self.count))
        if progress.state != "receiving" or progress.received >= progress.count:
            return []
        if now - max(entry.grew_at, entry.asked_at) < self.options.resend_after_s:
            return []
        return sorted(self._needed(entry))

    def _outcome(self, resumed: dict[str, int]) -> PushOutcome:
        results = []
        with self._cond:
            for entry in self._devices.values():
                progress = entry.progress
                if progress is None:
                    results.append(DeviceResult(entry.name, "no-answer", "no answer in time"))
                elif progress.state in FINAL_STATES:
                    results.append(DeviceResult(entry.name, progress.state, progress.reason))
                else:
                    detail = f"{progress.state}, {progress.received}/{progress.count} chunks"
                    results.append(DeviceResult(entry.name, "no-answer", f"timed out ({detail})"))
        return PushOutcome(
            transfer_id=self.transfer_id,
            results=tuple(results),
            exit_code=exit_code_of(results),
            chunks_sent=self.chunks_sent,
            reconnects=self.reconnects,
            resumed_from=resumed,
        )


def push_bundle(
    data: bytes,
    host: str,
    port: int,
    *,
    device: str | None = None,
    group: str | None = None,
    prefix: str = "edgewatch",
    mqtt_config: MqttSection | None = None,
    options: PushOptions | None = None,
    on_chunk_sent: Callable[[BundlePusher, int], None] | None = None,
) -> PushOutcome:
    """Push ``data`` to one device or a group; the outcome holds the exit code."""
    if (device is None) == (group is None):
        raise EdgewatchError("push needs exactly one of --device or --group")
    pusher = BundlePusher(data, host, port, prefix=prefix, mqtt_config=mqtt_config, options=options)
    if on_chunk_sent is not None:
        pusher.on_chunk_sent = lambda index: on_chunk_sent(pusher, index)
    try:
        if not pusher.connect():
            return PushOutcome(
                pusher.transfer_id,
                (
                    DeviceResult(
                        device or f"group {group}",
                        "unreachable",
                        f"broker {host}:{port} did not answer",
                    ),
                ),
                EXIT_UNREACHABLE,
                0,
                0,
            )
        if group is not None:
            devices = pusher.discover(group)
            if not devices:
                return PushOutcome(
                    pusher.transfer_id,
                    (
                        DeviceResult(
                            f"group {group}",
                            "no-devices",
                            "no online device's retained state lists this group",
                        ),
                    ),
                    EXIT_NO_DEVICES,
                    0,
                    0,
                )
            return pusher.push(devices, group=group)
        assert device is not None
        return pusher.push([device])
    finally:
        pusher.close()


def push_from_cli(
    bundle: Path,
    *,
    device: str | None,
    group: str | None,
    broker: tuple[str, int] | None,
    config_path: Path | None,
    prefix: str | None,
    options: PushOptions,
) -> int:
    """`edgewatch push`: prints one line per device and returns the exit code."""
    try:
        data = bundle.read_bytes()
    except OSError as exc:
        raise EdgewatchError(f"cannot read {bundle}: {exc.strerror}") from exc
    if options.chunk_bytes < 1024:
        raise EdgewatchError("--chunk-kib must be at least 1")
    mqtt_cfg = load_config(config_path).mqtt if config_path else None
    if broker is not None:
        host, port = broker
    elif mqtt_cfg is not None:
        host, port = mqtt_cfg.host, mqtt_cfg.port
    else:
        host, port = "localhost", 1883
    topic_prefix = prefix or (mqtt_cfg.prefix if mqtt_cfg else "edgewatch")
    outcome = push_bundle(
        data, host, port, device=device, group=group, prefix=topic_prefix,
        mqtt_config=mqtt_cfg, options=options,
    )  # fmt: skip
    for result in outcome.results:
        sys.stdout.write(f"{result.device}: {result.state}: {result.reason}\n")
    if outcome.resumed_from:
        resumed = ", ".join(f"{d} had {n}" for d, n in outcome.resumed_from.items())
        sys.stdout.write(f"resumed transfer {outcome.transfer_id} ({resumed} chunks)\n")
    return outcome.exit_code


def _settled(info: mqtt.MQTTMessageInfo) -> bool:
    """A chunk no longer worth waiting for in the window: acknowledged, or refused by
    paho because the connection dropped between the check and the publish (a chunk the
    device then lacks is asked for again). ``is_published`` raises on a refused one,
    which ended a push the lost connection should only have paused (CI caught it)."""
    if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN):
        return True
    return info.is_published()
