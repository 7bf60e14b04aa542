"""The durable outbox on its own: order, bounds and policies, age, reopening, corrupt
files, a disk that stops taking writes, concurrent producers; then MqttPublisher with an
outbox against a real mosquitto (events spooled while the broker is down, kept across a
publisher restart, delivered in order)."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from device.config import OutboxSection
from device.mqtt.payloads import Event
from device.mqtt.publisher import MqttPublisher
from device.mqtt.subscriber import EventSubscriber
from device.mqtt.topics import Topics
from device.outbox import OUTBOX_FILE, Outbox
from tests.conftest import Broker, free_port, start_mosquitto
from tests.test_mqtt_publisher import PREFIX, make_event, section

REPO = Path(__file__).resolve().parent.parent


class FakeClock:
    """Wall time the test moves by hand (age expiry without waiting)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def settings(**values: object) -> OutboxSection:
    return OutboxSection.model_validate(values)


def rows_on_disk(path: Path) -> list[tuple[int, str, bytes]]:
    """What another process would find in the file (a connection of its own)."""
    conn = sqlite3.connect(path)
    try:
        return [(r[0], r[1], bytes(r[2])) for r in
                conn.execute("SELECT id, topic, payload FROM outbox ORDER BY id")]  # fmt: skip
    finally:
        conn.close()


def test_rows_come_back_in_order_and_acks_delete_them(tmp_path: Path) -> None:
    path = tmp_path / OUTBOX_FILE
    with Outbox(path) as outbox:
        ids = [outbox.put(f"t/{i % 3}", f"payload {i}".encode()) for i in range(1000)]
        assert all(isinstance(i, int) for i in ids) and ids == sorted(ids)
        got = []
        after = 0
        while batch := outbox.read(after, 128):
            got += batch
            after = batch[-1].id
        assert [m.id for m in got] == ids
        assert [m.payload for m in got] == [f"payload {i}".encode() for i in range(1000)]
        assert [m.topic for m in got[:4]] == ["t/0", "t/1", "t/2", "t/0"]
        # The journal mode that makes a commit an append: WAL.
        mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"

        outbox.ack(m.id for m in got[:600])
        assert outbox.depth() == 400
        assert [m.id for m in outbox.read(0, 5)] == ids[600:605]  # acked rows never again
        outbox.flush()
        assert len(rows_on_disk(path)) == 400  # deleted from the file, not just hidden
        stats = outbox.stats()
        assert (stats.depth, stats.dropped, stats.in_memory, stats.writable) == (400, 0, 0, True)
        assert stats.bytes == sum(m.size for m in got[600:])


def test_reopening_keeps_what_was_not_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "state" / OUTBOX_FILE
    with Outbox(path) as outbox:
        ids = [outbox.put("t", bytes([i])) for i in range(10)]
        outbox.ack(ids[:4])
    with Outbox(path) as reopened:
        assert [m.payload for m in reopened.read(0, 100)] == [bytes([i]) for i in range(4, 10)]
        newer = reopened.put("t", b"new")
        assert newer is not None and newer > max(i for i in ids if i is not None)
        assert reopened.stats().depth == 7


@pytest.mark.parametrize(
    ("policy", "kept"), [("drop-oldest", list(range(3, 8))), ("drop-newest", list(range(5)))]
)
def test_max_events_and_the_when_full_policy(tmp_path: Path, policy: str, kept: list[int]) -> None:
    with Outbox(tmp_path / OUTBOX_FILE, settings(max_events=5, when_full=policy)) as outbox:
        results = [outbox.put("t", bytes([i])) for i in range(8)]
        assert [m.payload[0] for m in outbox.read(0, 100)] == kept
        stats = outbox.stats()
        assert (stats.depth, stats.dropped, stats.dropped_full) == (5, 3, 3)
        if policy == "drop-newest":
            assert results[5:] == [None, None, None]  # the caller is told
        else:
            assert None not in results


def test_acknowledged_rows_make_room_before_anything_is_dropped(tmp_path: Path) -> None:
    with Outbox(tmp_path / OUTBOX_FILE, settings(max_events=5)) as outbox:
        ids = [outbox.put("t", bytes([i])) for i in range(5)]
        outbox.ack(i for i in ids[:2] if i is not None)  # pending deletion, not yet deleted
        for i in range(5, 7):
            outbox.put("t", bytes([i]))
        assert [m.payload[0] for m in outbox.read(0, 100)] == [2, 3, 4, 5, 6]
        assert outbox.stats().dropped == 0


def test_max_mb_bounds_the_bytes(tmp_path: Path) -> None:
    limit = 2048  # bytes
    config = settings(max_mb=limit / (1024 * 1024))
    with Outbox(tmp_path / OUTBOX_FILE, config) as outbox:
        for i in range(30):
            assert outbox.put("events/cam", bytes([i]) * 190) is not None  # 200 bytes a row
        rows = outbox.read(0, 100)
        assert len(rows) == 10 and [m.payload[0] for m in rows] == list(range(20, 30))
        stats = outbox.stats()
        assert stats.bytes <= limit and stats.dropped_full == 20
        # One message larger than the whole bound is refused, whatever the policy.
        assert outbox.put("events/cam", b"x" * (limit + 1)) is None
        assert outbox.stats().dropped_full == 21
        assert len(outbox.read(0, 100)) == 10


def test_old_events_expire_and_are_counted(tmp_path: Path) -> None:
    clock = FakeClock()
    with Outbox(tmp_path / OUTBOX_FILE, settings(max_age_s=60), clock=clock) as outbox:
        for i in range(3):
            outbox.put("t", bytes([i]))
        clock.now += 50
        acked = outbox.put("t", b"\x03")
        outbox.put("t", b"\x04")
        assert acked is not None
        outbox.ack([acked])  # acknowledged before it expires: not a drop
        assert outbox.stats().oldest_age_s == 50.0
        clock.now += 20  # the first three are 70 s old now, the last two 20 s
        stats = outbox.stats()
        assert (stats.depth, stats.dropped_expired, stats.dropped) == (1, 3, 3)
        assert stats.oldest_age_s == 20.0
        assert [m.payload for m in outbox.read(0, 10)] == [b"\x04"]
        clock.now += 100
        assert outbox.stats().oldest_age_s is None  # empty: no age
        assert outbox.stats().dropped_expired == 4


def test_a_file_that_is_not_a_database_is_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / OUTBOX_FILE
    path.write_bytes(b"this is not SQLite, it is what a dying SD card returned" * 100)
    with caplog.at_level(logging.ERROR, logger="device.outbox"), Outbox(path) as outbox:
        assert outbox.put("t", b"after") is not None
        assert [m.payload for m in outbox.read(0, 10)] == [b"after"]
    aside = list(tmp_path.glob(f"{OUTBOX_FILE}.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not SQLite")
    assert "is corrupt" in caplog.text and aside[0].name in caplog.text
    assert rows_on_disk(path)[0][2] == b"after"


def test_a_damaged_page_is_found_at_open_and_set_aside(tmp_path: Path) -> None:
    path = tmp_path / OUTBOX_FILE
    with Outbox(path) as outbox:
        for _ in range(2000):
            outbox.put("t", b"p" * 200)
    data = bytearray(path.read_bytes())
    assert len(data) > 4096 * 60
    data[4096 * 40 : 4096 * 40 + 2000] = b"\xff" * 2000  # a b-tree page in the middle
    path.write_bytes(bytes(data))
    with Outbox(path) as outbox:
        assert outbox.stats().depth == 0  # started empty...
        assert outbox.put("t", b"fresh") is not None  # ...and works
        assert [m.payload for m in outbox.read(0, 10)] == [b"fresh"]
    assert len(list(tmp_path.glob(f"{OUTBOX_FILE}.corrupt-*"))) == 1


DISK_FULL_SCRIPT = textwrap.dedent(
    """
    import json, resource, signal, sys
    from pathlib import Path
    from device.config import OutboxSection
    from device.outbox import Outbox

    folder = Path(sys.argv[1])
    outbox = Outbox(folder / "outbox.sqlite", OutboxSection(memory_events=int(sys.argv[2])))
    for i in range(50):
        outbox.put("t", b"a%03d" % i + b"." * 200)
    # From here no file of this process may grow: a real EFBIG from the kernel, the
    # same failure SQLite sees on a full disk (ENOSPC), without filling the disk.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    biggest = max(p.stat().st_size for p in folder.iterdir())
    resource.setrlimit(resource.RLIMIT_FSIZE, (biggest, resource.RLIM_INFINITY))
    during = [outbox.put("t", b"b%03d" % i + b"." * 200) for i in range(30)]
    stats_during = outbox.stats()
    readable = [m.payload[:4].decode() for m in outbox.read(0, 1000)]
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
    outbox.flush()  # what the sender does when idle (puts retry at most once a second)
    after = outbox.put("t", b"c000")
    stats_after = outbox.stats()
    outbox.close()
    print(json.dumps({
        "during": during, "writable_during": stats_during.writable,
        "in_memory_during": stats_during.in_memory,
        "dropped_during": stats_during.dropped_unwritable, "readable": readable,
        "after": after, "in_memory_after": stats_after.in_memory,
        "writable_after": stats_after.writable,
    }))
    """
)


@pytest.mark.parametrize("memory_events", [100, 10])
def test_a_disk_that_refuses_writes_keeps_events_in_memory(
    tmp_path: Path, memory_events: int
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", DISK_FULL_SCRIPT, str(tmp_path), str(memory_events)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "cannot write outbox" in result.stderr  # said clearly, not raised
    assert report["writable_during"] is False
    kept = min(30, memory_events)
    assert report["in_memory_during"] == kept
    assert report["dropped_during"] == 30 - kept
    # The sender can still read everything, disk rows first, in order.
    expected_b = [f"b{i:03d}" for i in range(30 - kept, 30)]
    assert report["readable"] == [f"a{i:03d}" for i in range(50)] + expected_b
    # Once a write succeeds again the kept events reach the disk ahead of the new one.
    assert report["writable_after"] is True and report["in_memory_after"] == 0
    on_disk = [payload[:4].decode() for _, _, payload in rows_on_disk(tmp_path / OUTBOX_FILE)]
    assert on_disk == [f"a{i:03d}" for i in range(50)] + expected_b + ["c000"]


def test_concurrent_producers_and_one_consumer(tmp_path: Path) -> None:
    """Each producer's events come out in its own order, every one exactly once."""
    per_thread, threads = 400, 4
    received: list[bytes] = []
    done = threading.Event()
    with Outbox(tmp_path / OUTBOX_FILE) as outbox:

        def produce(name: int) -> None:
            for i in range(per_thread):
                assert outbox.put("t", f"{name}:{i}".encode()) is not None

        def consume() -> None:
            after = 0
            deadline = time.monotonic() + 30
            while len(received) < per_thread * threads and time.monotonic() < deadline:
                batch = outbox.read(after, 50)
                if not batch:
                    time.sleep(0.005)
                    continue
                received.extend(m.payload for m in batch)
                after = batch[-1].id
                outbox.ack(m.id for m in batch)
            done.set()

        workers = [threading.Thread(target=produce, args=(n,)) for n in range(threads)]
        consumer = threading.Thread(target=consume)
        consumer.start()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert done.wait(30)
        outbox.flush()
        assert outbox.depth() == 0
    assert len(received) == len(set(received)) == per_thread * threads
    for name in range(threads):
        mine = [int(p.split(b":")[1]) for p in received if p.startswith(f"{name}:".encode())]
        assert mine == list(range(per_thread))


# -- MqttPublisher with an outbox, against a real mosquitto ------------------------------


def spooling_publisher(port: int, device: str, folder: Path) -> MqttPublisher:
    outbox = Outbox(folder / OUTBOX_FILE)
    return MqttPublisher(section(port), Topics(PREFIX, device), outbox=outbox)


def received_seqs(subscriber: EventSubscriber, want: int, timeout: float = 15.0) -> list[int]:
    seqs: list[int] = []
    deadline = time.monotonic() + timeout
    while len(seqs) < want and time.monotonic() < deadline:
        message = subscriber.get(timeout=0.2)
        if message is not None and isinstance(message.payload, Event):
            seqs.append(message.payload.seq)
    return seqs


def wait_until(condition: object, timeout: float) -> bool:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


def test_events_go_through_the_outbox_in_order(mosquitto: Broker, tmp_path: Path) -> None:
    publisher = spooling_publisher(mosquitto.port, "pi-spool", tmp_path)
    with EventSubscriber(mosquitto.host, mosquitto.port, prefix=PREFIX,
                         device="pi-spool") as subscriber:  # fmt: skip
        assert subscriber.wait_subscribed(5)
        publisher.start()
        assert publisher.wait_connected(5)
        for seq in range(1, 501):
            publisher.publish_event(make_event("pi-spool", "cam", seq))
        assert received_seqs(subscriber, 500) == list(range(1, 501))
        assert wait_until(lambda: publisher.stats.spool_depth == 0, 10)
        stats = publisher.stats
        assert stats.acked >= 500 and stats.spool_dropped == 0 and stats.refused == 0
    publisher.stop()
    assert rows_on_disk(tmp_path / OUTBOX_FILE) == []


def test_spooled_events_wait_for_the_broker_across_a_publisher_restart(tmp_path: Path) -> None:
    port = free_port()
    first = spooling_publisher(port, "pi-wait", tmp_path)
    first.start()  # nothing listens
    for seq in range(1, 21):
        first.publish_event(make_event("pi-wait", "cam", seq))
    stats = first.stats
    assert (stats.spool_depth, stats.connected, stats.dropped) == (20, False, 0)
    assert stats.spool_oldest_age_s is not None and stats.spool_oldest_age_s >= 0
    first.stop(timeout=0.5)  # the broker is still away: the rows stay on disk
    assert len(rows_on_disk(tmp_path / OUTBOX_FILE)) == 20

    broker = start_mosquitto(tmp_path, port)
    try:
        with EventSubscriber("127.0.0.1", port, prefix=PREFIX, device="pi-wait") as subscriber:
            assert subscriber.wait_subscribed(5)
            second = spooling_publisher(port, "pi-wait", tmp_path)
            assert second.stats.spool_depth == 20
            second.start()
            second.publish_event(make_event("pi-wait", "cam", 21))  # behind the old ones
            assert received_seqs(subscriber, 21) == list(range(1, 22))
            assert wait_until(lambda: second.stats.spool_depth == 0, 10)
            second.stop()
        assert rows_on_disk(tmp_path / OUTBOX_FILE) == []
    finally:
        broker.process.kill()
        broker.process.wait(5)
