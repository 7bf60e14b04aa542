"""What the durable outbox costs: events/s through it against direct publishing.

Measured side by side in one run, against the same stock mosquitto:

1. Broker up, ``COUNT`` events published back to back by ``MqttPublisher``:
   - direct (``outbox=None``): rate = events / (last PUBACK - first publish);
   - through the outbox (``synchronous = "normal"``, the default): the same rate, and
     the producer's side alone (how fast ``publish_event`` returns: one SQLite commit
     each);
   - through the outbox with ``synchronous = "full"`` (an fsync per event), producer
     side and end to end, on fewer events.
2. Drain after an outage: ``COUNT`` events spooled by a publisher whose broker was
   down, that publisher stopped (the rows stay on disk), the broker started, a new
   publisher on the same outbox: rate = events / (spool empty - connected).

Every event must reach a ``mosquitto_sub`` subscriber (a C client, in its own process,
MQTT 5 with a large receive window), in seq order; only that is asserted, not speed.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from device.config import MqttSection, OutboxSection
from device.mqtt.payloads import Event
from device.mqtt.publisher import MqttPublisher
from device.mqtt.topics import Topics
from device.outbox import OUTBOX_FILE, Outbox
from tests.benchmarks.conftest import report
from tests.benchmarks.mqtt_burst import make_events
from tests.conftest import Broker, free_port, start_mosquitto

COUNT = 5_000
FULL_SYNC_COUNT = 1_000
RUNS = 3
PREFIX = "ewbench"
POLL_S = 0.002


@dataclass(frozen=True)
class Run:
    events: int
    #: events / (last PUBACK - first publish)
    rate: float
    #: events / (time for the publish_event loop alone)
    producer_rate: float


def section(port: int) -> MqttSection:
    return MqttSection(host="127.0.0.1", port=port, prefix=PREFIX, password_env=None,
                       reconnect_min_s=0.2, reconnect_max_s=1.0)  # fmt: skip


class Receiver:
    """``mosquitto_sub`` for one device's events; exits after ``count`` messages.

    Run with ``-d`` so that its SUBACK shows on stdout (payload lines are the JSON ones),
    line-buffered (``stdbuf -oL``) so that the SUBACK line comes when it happens.
    """

    def __init__(self, port: int, device: str, count: int) -> None:
        self.process = subprocess.Popen(
            ["stdbuf", "-oL", "mosquitto_sub", "-d", "-h", "127.0.0.1", "-p", str(port),
             "-V", "mqttv5", "-D", "connect", "receive-maximum", "65535", "-q", "1",
             "-t", f"{PREFIX}/{device}/events/#", "-C", str(count), "-W", "60"],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if b"received SUBACK" in line:
                return
        raise AssertionError("mosquitto_sub did not subscribe")

    def seqs(self) -> list[int]:
        out, _ = self.process.communicate(timeout=120)
        return [Event.model_validate_json(line).seq for line in out.splitlines()
                if line.startswith(b"{")]  # fmt: skip


def wait_for(condition: Callable[[], bool], timeout: float = 120.0) -> float:
    """Poll until true; the time it became true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(POLL_S)
    return time.monotonic()


def publish_run(
    broker: Broker, device: str, events: list[Event], outbox: Outbox | None
) -> tuple[Run, list[int]]:
    receiver = Receiver(broker.port, device, len(events))
    publisher = MqttPublisher(section(broker.port), Topics(PREFIX, device), outbox=outbox,
                              max_queued=0)  # fmt: skip
    publisher.start()
    assert publisher.wait_connected(10)
    wait_for(lambda: publisher.stats.pending == 0)  # "online" acknowledged
    started = time.monotonic()
    for event in events:
        publisher.publish_event(event)
    produced = time.monotonic()
    if outbox is None:
        done = wait_for(lambda: publisher.stats.pending == 0)
    else:
        done = wait_for(lambda: outbox.depth() == 0)
    publisher.stop()
    seqs = receiver.seqs()
    count = len(events)
    return Run(count, count / (done - started), count / (produced - started)), seqs


def drain_run(tmp: Path, device: str, events: list[Event]) -> tuple[float, list[int]]:
    port = free_port()
    path = tmp / device / OUTBOX_FILE
    spooler = MqttPublisher(section(port), Topics(PREFIX, device), outbox=Outbox(path))
    spooler.start()  # nothing listens on the port: the outage
    for event in events:
        spooler.publish_event(event)
    assert not spooler.connected and spooler.stats.spool_depth == len(events)
    spooler.stop(timeout=0.1)
    broker = start_mosquitto(tmp, port)
    try:
        receiver = Receiver(port, device, len(events))
        outbox = Outbox(path)
        publisher = MqttPublisher(section(port), Topics(PREFIX, device), outbox=outbox)
        publisher.start()
        assert publisher.wait_connected(10)
        connected = time.monotonic()
        done = wait_for(lambda: outbox.depth() == 0)
        publisher.stop()
        seqs = receiver.seqs()
    finally:
        broker.process.terminate()
        broker.process.wait(5)
    return len(events) / (done - connected), seqs


def test_outbox_throughput_beside_direct_publishing(mosquitto: Broker, tmp_path: Path) -> None:
    events = make_events("x", "cam", COUNT)
    direct: list[Run] = []
    spooled: list[Run] = []
    drains: list[float] = []
    delivered_in_order = True

    def check(device: str, seqs: list[int], count: int) -> None:
        nonlocal delivered_in_order
        expected = list(range(count))
        if seqs != expected:
            delivered_in_order = False
            print(f"{device}: received {len(seqs)} of {count}, in order: {seqs == sorted(seqs)}")

    for run in range(RUNS):  # interleaved, so a load change hits both alike
        device = f"direct{run}"
        result, seqs = publish_run(mosquitto, device, _for(events, device), None)
        direct.append(result)
        check(device, seqs, COUNT)
        device = f"outbox{run}"
        outbox = Outbox(tmp_path / device / OUTBOX_FILE)
        result, seqs = publish_run(mosquitto, device, _for(events, device), outbox)
        spooled.append(result)
        check(device, seqs, COUNT)
        device = f"drain{run}"
        rate, seqs = drain_run(tmp_path, device, _for(events, device))
        drains.append(rate)
        check(device, seqs, COUNT)
    device = "fullsync"
    full_outbox = Outbox(tmp_path / device / OUTBOX_FILE, OutboxSection(synchronous="full"))
    full, seqs = publish_run(
        mosquitto, device, _for(events[:FULL_SYNC_COUNT], device), full_outbox
    )
    check(device, seqs, FULL_SYNC_COUNT)

    direct_rate = statistics.median(r.rate for r in direct)
    direct_producer = statistics.median(r.producer_rate for r in direct)
    outbox_rate = statistics.median(r.rate for r in spooled)
    outbox_producer = statistics.median(r.producer_rate for r in spooled)
    drain_rate = statistics.median(drains)
    report(
        f"Durable outbox: {COUNT:,} events, MqttPublisher -> stock mosquitto -> mosquitto_sub "
        f"(median of {RUNS} interleaved runs)",
        [
            "broker up, events/s from first publish to last PUBACK:",
            f"  direct (no outbox):            {direct_rate:,.0f} events/s "
            f"(publish_event returns at {direct_producer:,.0f}/s)",
            f"  outbox, synchronous=normal:    {outbox_rate:,.0f} events/s "
            f"(publish_event returns at {outbox_producer:,.0f}/s, one commit each)",
            f"  outbox, synchronous=full:      {full.rate:,.0f} events/s "
            f"(publish_event returns at {full.producer_rate:,.0f}/s, fsync each; "
            f"{FULL_SYNC_COUNT:,} events, one run)",
            f"  ratio outbox/direct:           {outbox_rate / direct_rate:.2f} (normal), "
            f"{full.rate / direct_rate:.2f} (full)",
            "drain after an outage (spooled while the broker was down, publisher restarted):",
            f"  {drain_rate:,.0f} events/s from connect to an empty spool "
            f"({drain_rate / direct_rate:.2f} x direct publishing)",
            "runs: " + "; ".join(
                f"direct {d.rate:,.0f}, outbox {o.rate:,.0f}, drain {r:,.0f}"
                for d, o, r in zip(direct, spooled, drains, strict=True)
            ),
            f"every event delivered, in seq order: {delivered_in_order}",
        ],
        f"outbox at {outbox_rate / direct_rate:.0%} of direct publishing; drain "
        f"{drain_rate:,.0f} events/s",
    )
    assert delivered_in_order


def _for(events: list[Event], device: str) -> list[Event]:
    return [event.model_copy(update={"device": device}) for event in events]
