"""``edgewatch collect``: pull a device's hard examples into a training folder.

The workstation half of the retraining loop. It sends the device `collect` commands,
receives the examples on ``<prefix>/<device>/examples/<request_id>``, writes each image
to ``OUT/<predicted label>/<id>.jpg`` and one row to ``OUT/collected.csv``, then sends
`forget` for what it saved, so the device's store only ever holds what nobody has
pulled yet. The folder is an image-classification dataset as it stands
(``training/datasets/image_folder.py`` reads it); labelling is moving each wrongly
predicted image to the folder of its true label.

Collecting again into the same folder is safe: ids already in ``collected.csv`` or
already present as files are skipped (and still forgotten on the device), so an
interrupted run can simply be repeated. This module needs MQTT and no TensorFlow:
`edgewatch collect` runs on a machine without the train extra.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import queue
import re
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import BaseModel, ConfigDict, JsonValue, ValidationError
from tqdm import tqdm

from device.config import MqttSection
from device.errors import EdgewatchError
from device.examples.meta import ID_PATTERN, ExampleMeta
from device.examples.wire import DEFAULT_COLLECT_ITEMS, MAX_FORGET_IDS, ExampleMessage
from device.mqtt.client_options import make_client
from device.mqtt.payloads import CommandResult
from device.mqtt.topics import OFFLINE, Topics

log = logging.getLogger(__name__)

CSV_NAME = "collected.csv"
CSV_FIELDS = (
    "id", "file", "source", "pipeline", "model", "version", "label", "score", "reason",
    "captured_at", "note",
)  # fmt: skip
#: Kinds this version writes; audio clips and log windows arrive with their pipelines.
SUPPORTED_KINDS = frozenset({"image"})
_ID = re.compile(ID_PATTERN)


class CollectError(EdgewatchError):
    """Collecting failed: no broker, a silent device, or a device that refused."""


class BrokerUnreachableError(CollectError):
    pass


class DeviceSilentError(CollectError):
    pass


@dataclass(frozen=True)
class CollectOptions:
    device: str
    out: Path
    host: str = "localhost"
    port: int = 1883
    prefix: str = "edgewatch"
    #: TLS, credentials and protocol (a device config's [mqtt]); None: plain, anonymous.
    mqtt: MqttSection | None = None
    #: Stop after this many examples (None: everything the device has).
    max_items: int | None = None
    #: Leave the examples on the device (no `forget`).
    keep_on_device: bool = False
    #: Give up when the device has said nothing for this long.
    timeout_s: float = 30.0
    #: Examples asked for per `collect` command.
    batch: int = DEFAULT_COLLECT_ITEMS
    progress: bool = True


@dataclass(frozen=True)
class CollectReport:
    out: Path
    #: Ids written to the folder by this run.
    saved: tuple[str, ...]
    #: Received but already in the folder (an earlier run), so not written again.
    already_present: int
    #: Examples the device deleted on our `forget`.
    forgotten: int
    #: Examples still on the device that this run did not take (--max, or newer).
    remaining: int
    #: Examples of kinds this version cannot write yet (left on the device).
    unsupported: int
    #: Examples whose data did not match its checksum (left on the device).
    damaged: int

    @property
    def received(self) -> int:
        return len(self.saved) + self.already_present

    def render(self) -> str:
        lines = [
            f"saved {len(self.saved)} new example(s) to {self.out}"
            + (f" ({self.already_present} already there)" if self.already_present else ""),
        ]
        if self.forgotten:
            lines.append(f"the device deleted {self.forgotten} collected example(s)")
        if self.remaining:
            lines.append(f"{self.remaining} example(s) remain on the device")
        if self.unsupported:
            lines.append(
                f"{self.unsupported} example(s) of kinds this version cannot write yet "
                "were left on the device"
            )
        if self.damaged:
            lines.append(f"{self.damaged} example(s) arrived damaged and were left on the device")
        return "\n".join(lines)


class _Answer(BaseModel):
    """The parts of a collect result this client reads (extra keys allowed)."""

    model_config = ConfigDict(extra="ignore")

    sent: int
    remaining: int
    last_id: str | None = None


@dataclass(frozen=True)
class _Incoming:
    topic: str
    payload: bytes


class _Session:
    """One MQTT connection to the broker, subscribed to the device's answers."""

    def __init__(self, options: CollectOptions) -> None:
        self.options = options
        self.topics = Topics(options.prefix, options.device)
        self.messages: queue.Queue[_Incoming] = queue.Queue()
        self.availability: str | None = None
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._refusal: str | None = None
        client_id = f"edgewatch-collect-{uuid.uuid4().hex[:10]}"
        self.client = make_client(client_id, config=options.mqtt, role="collect")
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self._lost = False

    def open(self) -> None:
        address = f"{self.options.host}:{self.options.port}"
        try:
            self.client.connect(self.options.host, self.options.port, keepalive=30)
        except OSError as exc:
            raise BrokerUnreachableError(
                f"cannot reach the MQTT broker at {address} ({exc}); check --broker, or "
                "--config for a broker that needs TLS or a password"
            ) from exc
        self.client.loop_start()
        if not self._connected.wait(self.options.timeout_s) or self._refusal:
            self.close()
            reason = self._refusal or f"no answer within {self.options.timeout_s:g} s"
            raise BrokerUnreachableError(
                f"the MQTT broker at {address} did not accept the connection ({reason}); "
                "check credentials and TLS (--config)"
            )
        if not self._subscribed.wait(self.options.timeout_s):
            self.close()
            raise BrokerUnreachableError(f"the MQTT broker at {address} did not subscribe us")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def send(self, command: str, document: dict[str, JsonValue]) -> None:
        info = self.client.publish(
            self.topics.command(command), json.dumps(document).encode("utf-8"), qos=1
        )
        try:
            info.wait_for_publish(self.options.timeout_s)
        except (RuntimeError, ValueError) as exc:
            raise CollectError(
                f"could not send `{command}`: {exc}; {self.broker_state()}"
            ) from exc

    def broker_state(self) -> str:
        if self._lost:
            return (
                f"the connection to the broker {self.options.host}:{self.options.port} was "
                "lost; run collect again (what was saved is skipped)"
            )
        return "the broker connection is up"

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            self._refusal = str(reason)
            self._connected.set()
            return
        base = self.topics.base
        client.subscribe(
            [
                (f"{base}/examples/+", 1),
                (self.topics.command_result("collect"), 1),
                (self.topics.command_result("forget"), 1),
                (self.topics.availability, 1),
            ]
        )
        self._connected.set()

    def _on_disconnect(self, *args: Any) -> None:
        self._lost = True

    @property
    def lost(self) -> bool:
        return self._lost

    def _on_subscribe(self, *args: Any) -> None:
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic == self.topics.availability:
            self.availability = bytes(message.payload).decode("utf-8", "replace")
            return
        self.messages.put(_Incoming(message.topic, bytes(message.payload)))


class _Folder:
    """The output folder: label sub-folders, collected.csv, and the ids already there."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.csv_path = root / CSV_NAME
        self.known = self._known_ids()

    def _known_ids(self) -> set[str]:
        known: set[str] = set()
        if self.csv_path.is_file():
            with open(self.csv_path, newline="", encoding="utf-8") as handle:
                known.update(row.get("id", "") for row in csv.DictReader(handle))
        for child in self.root.iterdir():
            if child.is_dir():
                known.update(p.stem for p in child.iterdir() if _ID.match(p.stem))
        known.discard("")
        return known

    def save(self, meta: ExampleMeta, data: bytes) -> Path:
        folder = self.root / label_folder(meta.label)
        folder.mkdir(exist_ok=True)
        path = folder / meta.file_name
        tmp = folder / f".{meta.file_name}.part"
        tmp.write_bytes(data)
        os.replace(tmp, path)
        new_file = not self.csv_path.exists()
        with open(self.csv_path, "a", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            if new_file:
                writer.writerow(CSV_FIELDS)
            writer.writerow(csv_row(meta, path.relative_to(self.root)))
        self.known.add(meta.id)
        return path


def label_folder(label: str) -> str:
    """A folder name for a label: labels come from training folder names, so this is
    normally the label itself; anything a path could misread is replaced."""
    name = re.sub(r"[^\w .-]", "_", label).strip().lstrip(".")
    return name or "_unlabelled_"


def csv_row(meta: ExampleMeta, file: Path) -> list[str]:
    captured = datetime.fromtimestamp(meta.captured_at, timezone.utc)
    return [
        meta.id,
        file.as_posix(),
        meta.source,
        meta.pipeline,
        meta.model.name,
        meta.model.version,
        meta.label,
        f"{meta.score:.4f}",
        meta.reason,
        captured.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        meta.note or "",
    ]


def collect_examples(options: CollectOptions) -> CollectReport:
    """Pull examples from ``options.device`` into ``options.out``; see the module doc."""
    folder = _Folder(options.out)
    session = _Session(options)
    session.open()
    try:
        return _Collector(options, session, folder).run()
    finally:
        session.close()


class _Collector:
    def __init__(self, options: CollectOptions, session: _Session, folder: _Folder) -> None:
        self.options = options
        self.session = session
        self.folder = folder
        self.saved: list[str] = []
        self.already = 0
        self.forgotten = 0
        self.unsupported = 0
        self.damaged = 0
        self.remaining = 0
        self.bar = tqdm(
            desc=f"collect {options.device}",
            unit="example",
            disable=None if options.progress else True,
        )

    def run(self) -> CollectReport:
        cursor: str | None = None
        try:
            while True:
                left = self._left()
                if left == 0:
                    break
                answer, taken = self._batch(min(self.options.batch, left), cursor)
                self.remaining = answer.remaining
                if taken and not self.options.keep_on_device:
                    self._forget(taken)
                if answer.sent == 0 or answer.remaining == 0:
                    break
                cursor = answer.last_id
        finally:
            self.bar.close()
        return CollectReport(
            out=self.folder.root,
            saved=tuple(self.saved),
            already_present=self.already,
            forgotten=self.forgotten,
            remaining=self.remaining,
            unsupported=self.unsupported,
            damaged=self.damaged,
        )

    def _left(self) -> int:
        if self.options.max_items is None:
            return self.options.batch
        return max(0, self.options.max_items - len(self.saved) - self.already)

    def _batch(self, count: int, cursor: str | None) -> tuple[_Answer, list[str]]:
        """Ask for ``count`` examples after ``cursor`` and save them as they arrive;
        returns the device's answer and the ids now safely in the folder."""
        request_id = f"c{uuid.uuid4().hex[:16]}"
        document: dict[str, JsonValue] = {"request_id": request_id, "max_items": count}
        if cursor is not None:
            document["after"] = cursor
        self.session.send("collect", document)
        topic = self.session.topics.examples(request_id)
        answer: _Answer | None = None
        #: Every example of this answer that arrived, and whether it is in the folder.
        received: dict[str, bool] = {}
        done_before = self.bar.n
        deadline = time.monotonic() + self.options.timeout_s
        while answer is None or len(received) < answer.sent:
            incoming = self._next(deadline, "collect", answer, len(received))
            deadline = time.monotonic() + self.options.timeout_s
            if incoming.topic == topic:
                message = _parse_example(incoming.payload, request_id)
                if message is not None and message.example.id not in received:
                    received[message.example.id] = self._receive(message)
            elif incoming.topic == self.session.topics.command_result("collect"):
                result = _result_for(incoming.payload, request_id)
                if result is None:
                    continue
                if not result.ok:
                    raise CollectError(f"device {self.options.device} refused: {result.error}")
                answer = _Answer.model_validate(result.data)
                self._set_total(done_before, answer)
        return answer, [example_id for example_id, kept in received.items() if kept]

    def _next(
        self, deadline: float, command: str, answer: _Answer | None, got: int
    ) -> _Incoming:
        # Short waits, so a lost broker ends the run at once rather than at the timeout
        # (what the device sends meanwhile is lost to this session).
        while not self.session.lost:
            try:
                return self.session.messages.get(
                    timeout=min(0.2, max(0.0, deadline - time.monotonic()))
                )
            except queue.Empty:
                if time.monotonic() >= deadline:
                    break
        device = self.options.device
        if self.session.lost:
            raise BrokerUnreachableError(self.session.broker_state())
        if answer is not None:
            raise CollectError(
                f"device {device} announced {answer.sent} example(s) but only {got} arrived "
                f"within {self.options.timeout_s:g} s; run collect again"
            )
        offline = (
            " (the broker reports it offline)" if self.session.availability == OFFLINE else ""
        )
        never = " (it has never connected to this broker)" if not self.session.availability else ""
        raise DeviceSilentError(
            f"device {device} did not answer `{command}` within {self.options.timeout_s:g} s"
            f"{offline or never}; check that it runs, its id and the topic prefix "
            f"({self.options.prefix})"
        )

    def _receive(self, message: ExampleMessage) -> bool:
        """Save one example; True when it is in the folder (now or from before)."""
        meta = message.example
        self.bar.update(1)
        if meta.kind not in SUPPORTED_KINDS:
            self.unsupported += 1
            return False
        if meta.id in self.folder.known:
            self.already += 1
            return True
        try:
            data = message.data_bytes()
        except ValueError as exc:
            log.warning("%s; left on the device", exc)
            self.damaged += 1
            return False
        self.folder.save(meta, data)
        self.saved.append(meta.id)
        return True

    def _set_total(self, done_before: int, answer: _Answer) -> None:
        total = done_before + answer.sent + answer.remaining
        if self.options.max_items is not None:
            total = min(total, self.options.max_items)
        self.bar.total = max(total, self.bar.n)
        self.bar.refresh()

    def _forget(self, ids: Iterable[str]) -> None:
        pending = list(ids)
        while pending:
            chunk, pending = pending[:MAX_FORGET_IDS], pending[MAX_FORGET_IDS:]
            request_id = f"f{uuid.uuid4().hex[:16]}"
            ids_json: list[JsonValue] = list(chunk)
            self.session.send("forget", {"request_id": request_id, "ids": ids_json})
            topic = self.session.topics.command_result("forget")
            deadline = time.monotonic() + self.options.timeout_s
            while True:
                incoming = self._next(deadline, "forget", None, 0)
                if incoming.topic != topic:
                    continue
                result = _result_for(incoming.payload, request_id)
                if result is None:
                    continue
                if not result.ok:
                    raise CollectError(
                        f"device {self.options.device} did not forget the collected examples: "
                        f"{result.error}; they are saved, and a later collect skips them"
                    )
                forgotten = result.data.get("forgotten")
                self.forgotten += forgotten if isinstance(forgotten, int) else 0
                break


def _parse_example(payload: bytes, request_id: str) -> ExampleMessage | None:
    try:
        message = ExampleMessage.model_validate_json(payload)
    except ValidationError as exc:
        log.warning("ignored a malformed example message: %s", exc.errors()[:1])
        return None
    return message if message.request_id == request_id else None


def _result_for(payload: bytes, request_id: str) -> CommandResult | None:
    """The command result if it answers ``request_id`` (results of other clients'
    commands arrive on the same topic)."""
    try:
        result = CommandResult.model_validate_json(payload)
    except ValidationError:
        return None
    return result if result.request_id == request_id else None
