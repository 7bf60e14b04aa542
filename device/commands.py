"""Commands on ``<prefix>/<device>/cmd/<name>``, answered on ``.../cmd/<name>/result``.

Anyone allowed to publish there (Home Assistant, Node-RED, a script) can operate the
device without a shell on it. Each command's payload is a JSON object checked by its own
pydantic model (unknown keys and wrong types are refused, not coerced); whatever goes
wrong, from invalid JSON to an unknown label, becomes an error result that says why.
Nothing a sender does may raise into the daemon.

Messages arrive on paho's network thread, which must stay free to acknowledge QoS 1
traffic, so the callback only enqueues; one worker thread runs the commands in order.

| command | payload | does |
|---|---|---|
| enable / disable | {"source"} | start/stop inferring a source (capture goes on) |
| threshold | {"label", "threshold", "pipeline"?} | set a label's threshold |
| snapshot | {"source", "max_width"?, "quality"?} | JPEG of the latest frame, .../snapshot/<src> |
| reload | {} | re-read the config file; applies what can change live |
| state | {} | the device's state, thresholds and enabled sources |
| keep | {"source", "note"?, "pipeline"?} | keep the source's latest frame as a hard example |
| collect | {"request_id", "max_items"?, "after"?} | publish stored examples, .../examples/<id> |
| forget | {"ids"} | delete stored examples (what `edgewatch collect` saved) |

Every payload may carry ``request_id``, echoed in the result.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from device.detection.snapshot import encode_snapshot
from device.errors import EdgewatchError
from device.examples.meta import ID_PATTERN, MAX_NOTE_CHARS
from device.examples.wire import (
    DEFAULT_COLLECT_ITEMS,
    MAX_COLLECT_ITEMS,
    MAX_FORGET_IDS,
    REQUEST_ID_PATTERN,
)
from device.mqtt.payloads import CommandResult
from device.mqtt.publisher import MqttPublisher
from device.mqtt.topics import Topics

log = logging.getLogger(__name__)

UInt8Image = np.ndarray[Any, np.dtype[np.uint8]]

#: A ``snapshot`` command's JPEG never exceeds this, so it cannot clog a Pi's uplink or a
#: broker's message size limit (device/detection/snapshot.py lowers quality, then size).
MAX_SNAPSHOT_BYTES = 256 * 1024
#: Commands waiting for the worker; more than this at once is refused as busy.
QUEUE_SIZE = 64
#: Largest command payload read at all.
MAX_PAYLOAD_BYTES = 64 * 1024


class CommandError(EdgewatchError):
    """A well-formed command that cannot be carried out (unknown source, ...)."""


class _Command(BaseModel):
    # strict: "0.5" is not a threshold, "true" is not a bool.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    request_id: str | None = Field(None, max_length=128)


class SourceCommand(_Command):
    source: str


class ThresholdCommand(_Command):
    label: str
    threshold: float = Field(ge=0.0, le=1.0)
    #: Only this pipeline; by default every pipeline whose model has the label.
    pipeline: str | None = None


class SnapshotCommand(_Command):
    source: str
    max_width: int = Field(640, ge=16, le=4096)
    quality: int = Field(80, ge=10, le=95)


class ReloadCommand(_Command):
    pass


class StateCommand(_Command):
    pass


ExampleId = Annotated[str, Field(pattern=ID_PATTERN)]


class KeepCommand(_Command):
    source: str
    note: str | None = Field(None, max_length=MAX_NOTE_CHARS)
    #: Which of the source's pipelines' predictions to record; by default its first.
    pipeline: str | None = None


class CollectCommand(_Command):
    #: Required: it names the topic the examples are published on.
    request_id: str = Field(pattern=REQUEST_ID_PATTERN)  # type: ignore[assignment]
    max_items: int = Field(DEFAULT_COLLECT_ITEMS, ge=1, le=MAX_COLLECT_ITEMS)
    #: Only examples stored after this id (the previous answer's ``last_id``).
    after: ExampleId | None = None


class ForgetCommand(_Command):
    ids: list[ExampleId] = Field(max_length=MAX_FORGET_IDS)


COMMANDS: dict[str, type[_Command]] = {
    "enable": SourceCommand,
    "disable": SourceCommand,
    "threshold": ThresholdCommand,
    "snapshot": SnapshotCommand,
    "reload": ReloadCommand,
    "state": StateCommand,
    "keep": KeepCommand,
    "collect": CollectCommand,
    "forget": ForgetCommand,
}


@dataclass(frozen=True)
class ReloadReport:
    #: Config keys whose new values are now in force.
    applied: tuple[str, ...]
    #: Changed keys that only a restart applies (listed so the caller knows).
    restart_required: tuple[str, ...]


class CommandTarget(Protocol):
    """What commands act on: the daemon. Methods raise CommandError for requests that
    name something that does not exist."""

    def set_source_enabled(self, source: str, enabled: bool) -> None: ...

    def set_threshold(self, label: str, value: float, pipeline: str | None) -> list[str]: ...

    def latest_image(self, source: str) -> UInt8Image | None: ...

    def reload_config(self) -> ReloadReport: ...

    def report_state(self) -> dict[str, JsonValue]: ...

    def keep_example(
        self, source: str, note: str | None, pipeline: str | None
    ) -> dict[str, JsonValue]: ...

    def collect_examples(
        self, request_id: str, max_items: int, after: str | None
    ) -> dict[str, JsonValue]: ...

    def forget_examples(self, ids: Sequence[str]) -> dict[str, JsonValue]: ...


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "payload"
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        if error["type"] not in ("missing", "extra_forbidden") and "input" in error:
            message = f"{message} (got {error['input']!r})"
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


class CommandHandler:
    """Subscribes to the device's command topics and answers each command once."""

    def __init__(self, target: CommandTarget, publisher: MqttPublisher, topics: Topics) -> None:
        self._target = target
        self._publisher = publisher
        self._topics = topics
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self.handled = 0

    @property
    def subscription(self) -> str:
        return self._topics.command("+")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="commands", daemon=True)
        self._thread.start()
        self._publisher.subscribe(self.subscription, self._on_message)

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            log.warning("command queue still full at shutdown; pending commands dropped")
        self._thread.join(timeout_s)

    # -- network thread ---------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        name = topic.rsplit("/", 1)[-1]
        try:
            self._queue.put_nowait((name, payload))
        except queue.Full:
            self._publish(self._error(name, None, "the device is busy; send it again later"))

    # -- worker thread ----------------------------------------------------------------

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            name, payload = item
            try:
                self._publish(self.handle(name, payload))
            except Exception:  # a bug here must not end command handling for good
                log.exception("command %s could not be answered", name)

    def _publish(self, result: CommandResult) -> None:
        self._publisher.publish_raw(
            self._topics.command_result(result.command), result.to_bytes(), qos=1
        )

    def handle(self, name: str, payload: bytes) -> CommandResult:
        """Run one command; always returns a result, never raises."""
        self.handled += 1
        # Size first: nothing larger is even parsed (a request id included).
        if len(payload) > MAX_PAYLOAD_BYTES:
            return self._error(name, None, f"payload over {MAX_PAYLOAD_BYTES} bytes")
        request_id = _request_id(payload)
        model = COMMANDS.get(name)
        if model is None:
            return self._error(
                name, request_id, f"unknown command {name!r}; known: {', '.join(COMMANDS)}"
            )
        try:
            document = _parse_json(payload) if payload.strip() else {}
        except ValueError as exc:
            return self._error(name, request_id, f"payload is not valid JSON: {exc}")
        if not isinstance(document, dict):
            return self._error(name, request_id, "payload must be a JSON object")
        try:
            command = model.model_validate(document)
        except ValidationError as exc:
            return self._error(name, request_id, describe_validation_error(exc))
        try:
            data = self._run(name, command)
        except EdgewatchError as exc:  # CommandError, ConfigError from a reload
            return self._error(name, request_id, str(exc))
        except Exception as exc:  # a bug here must not take the daemon down
            log.exception("command %s failed", name)
            return self._error(name, request_id, f"internal error: {exc}; see the device log")
        log.info("command %s done", name)
        return CommandResult(
            device=self._topics.device,
            command=name,
            request_id=command.request_id,
            ok=True,
            at=time.time(),
            data=data,
        )

    def _run(self, name: str, command: _Command) -> dict[str, JsonValue]:
        target = self._target
        if isinstance(command, SourceCommand):
            enabled = name == "enable"
            target.set_source_enabled(command.source, enabled)
            return {"source": command.source, "enabled": enabled}
        if isinstance(command, ThresholdCommand):
            changed = target.set_threshold(command.label, command.threshold, command.pipeline)
            pipelines: list[JsonValue] = list(changed)
            return {"label": command.label, "threshold": command.threshold, "pipelines": pipelines}
        if isinstance(command, SnapshotCommand):
            return self._snapshot(command)
        if isinstance(command, KeepCommand):
            return target.keep_example(command.source, command.note, command.pipeline)
        if isinstance(command, CollectCommand):
            return target.collect_examples(command.request_id, command.max_items, command.after)
        if isinstance(command, ForgetCommand):
            return target.forget_examples(command.ids)
        if isinstance(command, ReloadCommand):
            report = target.reload_config()
            return {
                "applied": list(report.applied),
                "restart_required": list(report.restart_required),
            }
        return target.report_state()

    def _snapshot(self, command: SnapshotCommand) -> dict[str, JsonValue]:
        image = self._target.latest_image(command.source)
        if image is None:
            raise CommandError(f"source {command.source!r} has not delivered a frame yet")
        snapshot = encode_snapshot(image, command.max_width, command.quality, MAX_SNAPSHOT_BYTES)
        topic = self._topics.snapshot(command.source)
        self._publisher.publish_raw(topic, snapshot.jpeg, qos=1)
        return {
            "source": command.source,
            "topic": topic,
            "bytes": len(snapshot.jpeg),
            "width": snapshot.width,
            "height": snapshot.height,
            "quality": snapshot.quality,
        }

    def _error(self, name: str, request_id: str | None, reason: str) -> CommandResult:
        log.warning("command %s refused: %s", name, reason)
        return CommandResult(
            device=self._topics.device,
            command=name,
            request_id=request_id,
            ok=False,
            error=reason,
            at=time.time(),
        )


def _request_id(payload: bytes) -> str | None:
    """The request id of a payload that may be invalid otherwise, so even an error
    result can be matched to its request."""
    try:
        document = _parse_json(payload)
    except ValueError:
        return None
    if isinstance(document, dict):
        value = document.get("request_id")
        if isinstance(value, str) and len(value) <= 128:
            return value
    return None


def _parse_json(payload: bytes) -> Any:
    """Parse a command payload; every way it can be wrong becomes a ValueError.

    Python's parser recurses once per nesting level, so ``[[[[...`` a few thousand deep
    raises RecursionError rather than a decode error: that must not reach (and end) the
    command worker.
    """
    try:
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(str(exc)) from exc
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc


def unknown(kind: str, name: str, known: Sequence[str]) -> CommandError:
    """The error for a name that does not exist, listing the ones that do."""
    return CommandError(f"unknown {kind} {name!r}; known: {', '.join(known) or 'none'}")
