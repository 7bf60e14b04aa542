"""The publishing side of the MQTT throughput benchmark, run as its own process.

A device publishes from its own process, and a Python subscriber in the same process
as the publisher would share one GIL with it, measuring thread scheduling rather than
the transport. So the benchmark starts this module as a child: it builds ``count`` Event
payloads, connects an ``MqttPublisher``, waits for one line on stdin (so that imports and
connecting are not timed), prints the wall time of its first publish, publishes all of
them back to back at QoS 1, waits for every PUBACK and prints its counters as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from device.config import MqttSection
from device.mqtt.payloads import Event, ModelRef
from device.mqtt.publisher import MqttPublisher
from device.mqtt.topics import Topics

log = logging.getLogger(__name__)

MODEL = ModelRef(name="shapes", version="1.0.0", sha256="0" * 64)


def make_events(device: str, source: str, count: int) -> list[Event]:
    now = time.time()
    return [
        Event(
            device=device, source=source, seq=seq, event_id=f"e{seq}", type="instant",
            captured_at=now, published_at=now, latency_ms=1.0, model=MODEL,
            task="image-classification", label="circle", score=0.9, top_score=0.9,
            pipeline="shapes",
        )
        for seq in range(count)
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--prefix", default="ewbench")
    parser.add_argument("--device", default="burst")
    parser.add_argument("--count", type=int, default=20_000)
    args = parser.parse_args(argv)
    events = make_events(args.device, "cam", args.count)
    section = MqttSection(host="127.0.0.1", port=args.port, prefix=args.prefix,
                          password_env=None, reconnect_min_s=0.2, reconnect_max_s=1.0)
    # max_queued=0: the whole burst may wait in paho's queue (the default bound of
    # 10,000 is the daemon's guard against a long outage, not a transport limit).
    publisher = MqttPublisher(section, Topics(args.prefix, args.device), max_queued=0)
    publisher.start()
    if not publisher.wait_connected(10):
        print(json.dumps({"error": "publisher could not connect"}), flush=True)
        return 1
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.time()
    print(json.dumps({"started": started}), flush=True)
    for event in events:
        publisher.publish_event(event)
    deadline = time.monotonic() + 60
    while publisher.stats.pending and time.monotonic() < deadline:
        time.sleep(0.01)
    acked_at = time.time()
    stats = publisher.stats
    publisher.stop()
    print(json.dumps({"acked_at": acked_at, "published": stats.published,
                      "acked": stats.acked, "dropped": stats.dropped}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
