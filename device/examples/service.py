"""The device side of the retraining loop: the store, the recorder and the commands
`keep`, `collect` and `forget` that act on them.

The daemon builds one :class:`ExampleService` (see :func:`open_examples`), calls
:meth:`ExampleService.observe` after each pipeline's ``process``, and hands the three
commands to it. Command methods raise CommandError for requests that cannot be met;
the command handler turns that into an error result.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from pydantic import JsonValue

from device.commands import CommandError, UInt8Image, unknown
from device.config import DeviceConfig
from device.errors import EdgewatchError
from device.examples.meta import ExampleMeta
from device.examples.recorder import ExampleRecorder, ObservedPipeline, RecorderStats
from device.examples.store import (
    ExampleDamagedError,
    ExampleStore,
    ExampleStoreError,
    StoreStats,
)
from device.examples.wire import MAX_COLLECT_BYTES, ExampleMessage
from device.mqtt.payloads import ModelRef
from device.mqtt.topics import Topics

log = logging.getLogger(__name__)

FOLDER = "examples"


class RawPublisher(Protocol):
    """The one publishing call collect needs (MqttPublisher has it)."""

    def publish_raw(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> bool: ...


@dataclass(frozen=True)
class ExamplesStats:
    store: StoreStats
    recorder: RecorderStats


class ExampleService:
    def __init__(
        self,
        store: ExampleStore,
        recorder: ExampleRecorder,
        publisher: RawPublisher,
        topics: Topics,
        source_pipelines: Mapping[str, Sequence[str]],
    ) -> None:
        self.store = store
        self.recorder = recorder
        self._publisher = publisher
        self._topics = topics
        #: Pipelines per source, in config order: `keep` uses the first unless told.
        self._source_pipelines = {s: tuple(p) for s, p in source_pipelines.items()}
        self._observe_failed = False

    def start(self) -> None:
        self.recorder.start()

    def close(self) -> None:
        self.recorder.close()
        stats = self.stats()
        log.info(
            "examples: %d stored (%.1f MiB); kept %d automatically this run, %d dropped, "
            "%d rate-limited",
            stats.store.count,
            stats.store.bytes / 2**20,
            stats.recorder.kept,
            stats.recorder.dropped,
            stats.recorder.detector.rate_limited,
        )

    def observe(self, pipeline: ObservedPipeline, model: ModelRef, image: UInt8Image) -> None:
        """After each pipeline's ``process``, on its inference thread. Never raises:
        a fault in keeping examples must not stop a source's inference."""
        try:
            self.recorder.observe(pipeline, model, image)
        except Exception:  # logged once; examples are optional, detections are not
            if not self._observe_failed:
                log.exception("keeping examples of %s failed; inference goes on", pipeline.name)
            self._observe_failed = True

    def stats(self) -> ExamplesStats:
        return ExamplesStats(self.store.stats(), self.recorder.stats())

    # -- commands (command worker thread) ---------------------------------------------

    def keep(
        self, source: str, note: str | None, pipeline: str | None = None
    ) -> dict[str, JsonValue]:
        """Store the latest frame of ``source`` now, with the prediction made for it."""
        pipelines = self._source_pipelines.get(source)
        if pipelines is None:
            raise unknown("source", source, sorted(self._source_pipelines))
        if pipeline is not None and pipeline not in pipelines:
            raise CommandError(
                f"pipeline {pipeline!r} does not run on source {source!r}; "
                f"its pipelines: {', '.join(pipelines)}"
            )
        candidates = (pipeline,) if pipeline is not None else pipelines
        seen = next(
            (s for s in (self.recorder.latest(name) for name in candidates) if s is not None),
            None,
        )
        if seen is None:
            raise CommandError(
                f"source {source!r} has not had a frame inferred yet; send keep again "
                "once it runs (a disabled source is not inferred)"
            )
        try:
            meta = self.recorder.write(seen, "command", note)
        except EdgewatchError as exc:
            raise CommandError(f"the frame could not be kept: {exc}") from exc
        log.info("kept example %s of %s on command", meta.id, source)
        return {
            "id": meta.id,
            "source": meta.source,
            "pipeline": meta.pipeline,
            "label": meta.label,
            "score": meta.score,
            "captured_at": meta.captured_at,
            "bytes": meta.bytes,
            "stored": self.store.stats().count,
        }

    def collect(self, request_id: str, max_items: int, after: str | None) -> dict[str, JsonValue]:
        """Publish up to ``max_items`` examples stored after ``after`` (oldest first,
        at most MAX_COLLECT_BYTES of data), each on ``examples/<request_id>``."""
        topic = self._topics.examples(request_id)
        chosen: list[tuple[ExampleMeta, bytes]] = []
        total = 0
        damaged = 0
        for meta in self.store.examples(after):
            if len(chosen) >= max_items:
                break
            if chosen and total + meta.bytes > MAX_COLLECT_BYTES:
                break
            try:
                data = self.store.read(meta.id)
            except ExampleDamagedError:
                damaged += 1
                continue
            except ExampleStoreError as exc:  # evicted since the listing
                log.info("collect skips an example: %s", exc)
                continue
            chosen.append((meta, data))
            total += len(data)
        sent = 0
        last_id = after
        for index, (meta, data) in enumerate(chosen):
            message = ExampleMessage.build(
                meta,
                data,
                device=self._topics.device,
                request_id=request_id,
                index=index,
                count=len(chosen),
            )
            if not self._publisher.publish_raw(topic, message.to_bytes(), qos=1):
                log.warning("collect %s stopped: the publisher refused example %s", request_id,
                            meta.id)  # fmt: skip
                break
            sent += 1
            last_id = meta.id
        remaining = len(self.store.examples(last_id))
        log.info("collect %s: sent %d example(s), %d remain", request_id, sent, remaining)
        return {
            "request_id": request_id,
            "topic": topic,
            "sent": sent,
            "bytes": sum(len(data) for _, data in chosen[:sent]),
            "remaining": remaining,
            "last_id": last_id,
            "damaged": damaged,
            "stored": self.store.stats().count,
        }

    def forget(self, ids: Sequence[str]) -> dict[str, JsonValue]:
        removed = self.store.remove(ids)
        log.info("forgot %d example(s) on command", len(removed))
        return {
            "forgotten": len(removed),
            "unknown": len(set(ids) - set(removed)),
            "stored": self.store.stats().count,
        }


def open_examples(
    config: DeviceConfig, publisher: RawPublisher, topics: Topics
) -> ExampleService | None:
    """The daemon's example service, or None when ``[examples] enabled = false``."""
    section = config.examples
    if not section.enabled:
        return None
    store = ExampleStore(
        config.device.state_dir / FOLDER,
        max_items=section.max_items,
        max_bytes=int(section.max_mb * 1024 * 1024),
    )
    sources: dict[str, list[str]] = {}
    for name, pipeline in config.pipelines.items():
        sources.setdefault(pipeline.source, []).append(name)
    log.info(
        "examples: %d stored in %s (bounds %d, %.0f MiB)",
        store.opened.kept,
        store.root,
        section.max_items,
        section.max_mb,
    )
    return ExampleService(store, ExampleRecorder(store, section), publisher, topics, sources)
