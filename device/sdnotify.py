"""systemd's notify protocol: readiness, watchdog pings, status lines, stopping.

Under ``Type=notify`` systemd starts the unit, passes the path of a unix datagram socket
in ``NOTIFY_SOCKET``, and waits for ``READY=1`` before it counts the service as started
(so ``systemctl start`` returns once models are loaded, and units ordered after edgewatch
wait for that). With ``WatchdogSec=`` it also passes ``WATCHDOG_USEC`` and restarts the
service when no ``WATCHDOG=1`` arrives within that time: a hung daemon gets restarted
instead of sitting there looking healthy.

Why hand-written instead of python-systemd or sdnotify from PyPI: python-systemd is a C
extension that needs libsystemd's headers and a compiler on the Pi (no wheels), and the
whole protocol is one datagram of ``KEY=value`` lines sent to one socket. This module is
that datagram and nothing more. Outside systemd (``NOTIFY_SOCKET`` unset: a terminal,
the demo, the tests) every call is a no-op, so the daemon calls it unconditionally.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class SdNotifier:
    """Sends notify messages to the socket named by ``NOTIFY_SOCKET`` (if any).

    Send failures are logged once at warning level and never raised: losing a status
    line must not take the daemon down. (Losing ``READY=1`` or the watchdog does make
    systemd act, which is what it should do when the socket is broken.)
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_s = _watchdog_interval_s(env)
        self._warned = False

    @property
    def enabled(self) -> bool:
        """Whether a notify socket was given (i.e. we run under ``Type=notify``)."""
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send ``WATCHDOG=1``: half of ``WATCHDOG_USEC``, as systemd's own
        documentation advises, so one late ping is not yet a restart. None when the
        watchdog is off or meant for another process (``WATCHDOG_PID``)."""
        return self._watchdog_s

    def notify(self, **fields: str) -> bool:
        """Send one datagram of ``KEY=value`` lines; True when it was sent."""
        if self._address is None or not fields:
            return False
        for key, value in fields.items():
            if "\n" in value:
                raise ValueError(f"notify field {key} must be a single line, got {value!r}")
        payload = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(payload, self._address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot reach systemd's notify socket (%s); continuing", exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify(READY="1", STATUS=status)

    def status(self, status: str) -> bool:
        return self.notify(STATUS=status)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG="1")

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify(STOPPING="1", STATUS=status)


def _socket_address(value: str) -> str | bytes | None:
    """A path, or an abstract-namespace name (``@name`` on the wire is ``\\0name``)."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    # systemd 254+ may also pass vsock: addresses (to VMs); no edgewatch device runs so.
    log.warning("NOTIFY_SOCKET=%r is not a unix socket path; systemd notifications are off", value)
    return None


def _watchdog_interval_s(env: Mapping[str, str]) -> float | None:
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000 / 2
