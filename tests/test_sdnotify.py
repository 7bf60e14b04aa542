"""systemd's notify protocol, received on a real unix datagram socket.

The end-to-end test runs `python -m device.cli run` as a subprocess the way systemd
would (NOTIFY_SOCKET, WATCHDOG_USEC, SIGTERM) and reads what it sends.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from device.sdnotify import SdNotifier
from tests.conftest import Broker, free_port
from tests.test_daemon import write_config

REPO = Path(__file__).resolve().parent.parent
DEMO_VIDEO = REPO / "deploy" / "demo" / "samples" / "shapes.mp4"


class NotifySocket:
    """The receiving end systemd would hold: one datagram a notification."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value
        self.received: list[dict[str, str]] = []

    def receive(self, timeout_s: float) -> dict[str, str] | None:
        self.sock.settimeout(timeout_s)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        fields = dict(line.split("=", 1) for line in data.decode().splitlines())
        self.received.append(fields)
        return fields

    def wait_for(self, key: str, timeout_s: float) -> dict[str, str] | None:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            fields = self.receive(left)
            if fields is not None and key in fields:
                return fields
        return None


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    try:
        yield NotifySocket(sock, str(path))
    finally:
        sock.close()


def test_ready_status_watchdog_stopping_arrive_as_datagrams(notify_socket: NotifySocket) -> None:
    notifier = SdNotifier({"NOTIFY_SOCKET": notify_socket.env_value})
    assert notifier.enabled
    assert notifier.ready("2 sources")
    assert notify_socket.receive(2) == {"READY": "1", "STATUS": "2 sources"}
    assert notifier.watchdog()
    assert notify_socket.receive(2) == {"WATCHDOG": "1"}
    assert notifier.status("broker connected")
    assert notify_socket.receive(2) == {"STATUS": "broker connected"}
    assert notifier.stopping()
    assert notify_socket.receive(2) == {"STOPPING": "1", "STATUS": "stopping"}


def test_abstract_namespace_socket() -> None:
    name = f"edgewatch-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2)
        assert SdNotifier({"NOTIFY_SOCKET": "@" + name}).ready("ok")
        assert sock.recv(4096) == b"READY=1\nSTATUS=ok"


def test_no_socket_means_no_op() -> None:
    notifier = SdNotifier({})
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert notifier.watchdog_interval_s is None


def test_vanished_socket_is_not_an_error(tmp_path: Path) -> None:
    notifier = SdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.enabled
    assert not notifier.ready("x")


def test_multiline_values_are_refused(notify_socket: NotifySocket) -> None:
    notifier = SdNotifier({"NOTIFY_SOCKET": notify_socket.env_value})
    with pytest.raises(ValueError, match="single line"):
        notifier.status("one\nREADY=1")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout(env: dict[str, str], expected: float | None) -> None:
    assert SdNotifier(env).watchdog_interval_s == expected


def _daemon_config(directory: Path, broker_port: int) -> Path:
    """The daemon on the demo model and a looping copy of the demo video."""
    return write_config(directory, broker_port, DEMO_VIDEO, loop=True, fps=10)


def _start_daemon(config: Path, notify: NotifySocket, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "device.cli", "run", "--config", str(config)],
        cwd=REPO,
        env={**os.environ, "NOTIFY_SOCKET": notify.env_value, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _finish(process: subprocess.Popen[bytes]) -> str:
    if process.poll() is None:
        process.kill()
        process.wait()
    assert process.stderr is not None
    stderr = process.stderr.read().decode()
    process.stderr.close()
    return stderr


def test_daemon_under_notify_with_broker_down(tmp_path: Path, notify_socket: NotifySocket) -> None:
    """As systemd runs it: ready although nothing listens on the broker's port, watchdog
    pings at half of WATCHDOG_USEC, STOPPING=1 and a clean exit on SIGTERM."""
    config = _daemon_config(tmp_path, free_port())  # nothing listens there
    process = _start_daemon(config, notify_socket, WATCHDOG_USEC="2000000")
    try:
        ready = notify_socket.wait_for("READY", 60)
        assert ready is not None, "no READY=1 from the daemon"
        assert "not connected" in ready["STATUS"]
        started = time.monotonic()
        pings = 0
        while time.monotonic() - started < 4.5:
            fields = notify_socket.receive(2.0)
            assert fields is not None, "the watchdog went quiet for 2 s (systemd would restart)"
            pings += fields.get("WATCHDOG") == "1"
        assert pings >= 3  # every ~1 s, half of the 2 s timeout
        process.send_signal(signal.SIGTERM)
        stopping = notify_socket.wait_for("STOPPING", 10)
        assert stopping is not None
        assert process.wait(15) == 0
    finally:
        stderr = _finish(process)
    assert "Traceback" not in stderr


def test_daemon_status_follows_the_broker(
    tmp_path: Path, notify_socket: NotifySocket, mosquitto: Broker
) -> None:
    """Without WATCHDOG_USEC no pings; the status line reports the broker connection."""
    process = _start_daemon(_daemon_config(tmp_path, mosquitto.port), notify_socket)
    try:
        assert notify_socket.wait_for("READY", 60) is not None

        def connected() -> bool:  # in READY's status already, or in a later one
            statuses = [fields.get("STATUS", "") for fields in notify_socket.received]
            return any(status.endswith(" connected") for status in statuses)

        deadline = time.monotonic() + 10
        while not connected() and time.monotonic() < deadline:
            notify_socket.receive(1.0)
        assert connected(), notify_socket.received
        assert not any("WATCHDOG" in fields for fields in notify_socket.received)
        process.send_signal(signal.SIGTERM)
        assert notify_socket.wait_for("STOPPING", 10) is not None
        assert process.wait(15) == 0
    finally:
        stderr = _finish(process)
    assert "Traceback" not in stderr
