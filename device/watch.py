"""``edgewatch watch``: a live view of devices and their events, or JSON lines.

This is a CLI backend, so it writes to the terminal, but only through the rich Console
it is given (tests pass one that writes to a StringIO). The view is a pure function of a
:class:`WatchModel`, which is updated from the subscriber's queue on this thread, so
rendering never races paho's network thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from device.config import MqttSection
from device.mqtt.payloads import Event, State, Stats
from device.mqtt.subscriber import EventSubscriber, Received, SeqTracker, SubscriberStats
from device.mqtt.topics import ONLINE

log = logging.getLogger(__name__)

RECENT_EVENTS = 20
DEFAULT_PORT = 1883


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int


def parse_broker(text: str, default_port: int = DEFAULT_PORT) -> BrokerAddress:
    """``HOST``, ``HOST:PORT`` or ``[V6ADDR]:PORT`` as given to ``--broker``."""
    host, port_text = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError(f"--broker {text!r}: expected HOST or HOST:PORT")
    if not port_text:
        return BrokerAddress(host, default_port)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"--broker {text!r}: the port must be a number from 1 to 65535")
    return BrokerAddress(host, int(port_text))


@dataclass
class DeviceView:
    availability: str = "?"
    state: State | None = None
    stats: Stats | None = None
    last_seen: float = 0.0


@dataclass
class WatchModel:
    """What the view shows, accumulated from received messages."""

    title: str = "edgewatch"
    devices: dict[str, DeviceView] = field(default_factory=dict)
    events: deque[Received] = field(default_factory=lambda: deque(maxlen=RECENT_EVENTS))
    seq: SeqTracker = field(default_factory=SeqTracker)
    connected: bool = False
    counters: SubscriberStats | None = None

    def update(self, message: Received) -> None:
        view = self.devices.setdefault(message.device, DeviceView())
        view.last_seen = message.received_at
        payload = message.payload
        if isinstance(payload, Event):
            self.events.append(message)
        elif isinstance(payload, State):
            view.state = payload
        elif isinstance(payload, Stats):
            view.stats = payload
        elif message.kind == "availability" and isinstance(payload, str):
            view.availability = payload

    def render(self, now: float | None = None) -> RenderableType:
        now = time.time() if now is None else now
        status = Text.assemble(
            (self.title, "bold"),
            "  ",
            ("connected", "green") if self.connected else ("connecting…", "yellow"),
        )
        if self.counters is not None:
            status.append(f"  received {self.counters.received}  invalid {self.counters.invalid}")
        return Group(status, self._devices_table(now), self._events_table(now), self._seq_table())

    def _devices_table(self, now: float) -> Table:
        table = Table(title="devices", expand=True)
        for column in (
            "device",
            "availability",
            "version",
            "sources",
            "pipelines",
            "fps",
            "inference ms",
            "seen",
        ):
            table.add_column(column)
        for name, view in sorted(self.devices.items()):
            style = "green" if view.availability == ONLINE else "red"
            table.add_row(
                name,
                Text(view.availability, style=style),
                view.state.software_version if view.state else "",
                _sources(view.state),
                _pipelines(view.state),
                ", ".join(f"{s.name} {s.fps:.1f}" for s in view.stats.sources)
                if view.stats
                else "",
                ", ".join(f"{p.name} {p.inference_ms_p50:.1f}" for p in view.stats.pipelines)
                if view.stats
                else "",
                f"{max(0.0, now - view.last_seen):.0f}s ago",
            )
        return table

    def _events_table(self, now: float) -> Table:
        table = Table(title=f"last {RECENT_EVENTS} events", expand=True)
        for column in (
            "time",
            "device",
            "source",
            "type",
            "label",
            "score",
            "seq",
            "latency ms",
            "e2e ms",
        ):
            table.add_column(column)
        for message in reversed(self.events):
            event = message.payload
            if not isinstance(event, Event):
                continue
            table.add_row(
                time.strftime("%H:%M:%S", time.localtime(event.captured_at)),
                event.device,
                event.source,
                event.type,
                event.label,
                f"{event.score:.2f}",
                str(event.seq),
                f"{event.latency_ms:.0f}",
                f"{(message.received_at - event.captured_at) * 1000:.0f}",
            )
        return table

    def _seq_table(self) -> Table:
        table = Table(title="sequence check", expand=True)
        for column in ("device", "source", "received", "last seq", "gaps", "duplicates"):
            table.add_column(column)
        for status in self.seq.snapshot():
            table.add_row(
                status.device,
                status.source,
                str(status.received),
                str(status.last_seq),
                Text(str(status.gaps), style="red" if status.gaps else ""),
                Text(str(status.duplicates), style="yellow" if status.duplicates else ""),
            )
        return table


def _sources(state: State | None) -> str:
    if state is None:
        return ""
    return ", ".join(f"{s.name} ({s.status})" for s in state.sources)


def _pipelines(state: State | None) -> str:
    if state is None:
        return ""
    return ", ".join(
        f"{p.name}: {p.model.name} {p.model.version} [{'edgetpu' if p.edgetpu else p.runtime}]"
        for p in state.pipelines
    )


def run_watch(
    broker_host: str,
    port: int,
    prefix: str,
    device: str | None,
    as_json: bool,
    *,
    config_for_tls: MqttSection | None = None,
    stop_event: threading.Event | None = None,
    console: Console | None = None,
    refresh_s: float = 0.25,
) -> int:
    """Show the live view (or JSON lines) until ``stop_event`` is set or Ctrl-C; 0."""
    console = console or Console()
    stop = stop_event or threading.Event()
    subscriber = EventSubscriber(
        broker_host, port, prefix=prefix, device=device, config=config_for_tls
    )
    model = WatchModel(
        title=f"edgewatch watch {broker_host}:{port} {subscriber.topic_filter}", seq=subscriber.seq
    )
    subscriber.start()
    try:
        if as_json:
            _json_loop(subscriber, console, stop, refresh_s)
        else:
            _live_loop(subscriber, model, console, stop, refresh_s)
    except KeyboardInterrupt:
        pass
    finally:
        subscriber.stop()
    return 0


def _json_loop(
    subscriber: EventSubscriber, console: Console, stop: threading.Event, refresh_s: float
) -> None:
    """One event a line, exactly the wire JSON, for ``jq`` and friends."""
    out = console.file
    while not stop.is_set():
        message = subscriber.get(timeout=refresh_s)
        if message is None:
            continue
        batch = [message, *subscriber.drain()]
        for item in batch:
            if isinstance(item.payload, Event):
                out.write(item.payload.model_dump_json(by_alias=True) + "\n")
        out.flush()


def _live_loop(
    subscriber: EventSubscriber,
    model: WatchModel,
    console: Console,
    stop: threading.Event,
    refresh_s: float,
) -> None:
    with Live(
        model.render(), console=console, refresh_per_second=max(1.0, 1 / refresh_s), transient=False
    ) as live:
        while not stop.is_set():
            for message in subscriber.drain():
                model.update(message)
            model.connected = subscriber.connected
            model.counters = subscriber.stats
            live.update(model.render())
            stop.wait(refresh_s)
