"""A syslog receiver for devices that forward their logs: UDP and TCP, RFC 3164 and 5424.

UDP: one datagram is one message (RFC 5426). When the consumer falls behind and the
queue is full, datagrams are dropped and counted: a UDP sender cannot be slowed down, and
piling up old lines without bound would only delay the new ones.

TCP: one thread serves every connection through a selector. Each connection may use
either framing of RFC 6587, decided per message: octet counting (``LEN SP MSG``, what
RFC 5425/5424 senders use) when the message starts with a digit, newline-terminated
otherwise (rsyslog's and most devices' default). When the queue is full the thread waits,
so TCP senders are slowed by the kernel's flow control instead of losing messages.

Memory is bounded whatever clients do: at most ``max_clients`` connections (further ones
are closed at once and counted), at most ``max_message_bytes`` buffered per connection
(a longer message is cut, the rest skipped as it arrives, and flagged ``truncated``),
and a connection silent for ``client_idle_timeout_s`` is closed, so a client that sends a
byte a minute holds one slot for a while but never memory.

Messages are parsed by ``syslog_parse.parse_syslog``; one without a valid ``<PRI>`` is
kept whole as raw text (``meta = None``) and counted as ``unparsed``. ``ack`` is accepted
and ignored: the network keeps no position to resume from.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, cast

from device.errors import SourceError
from device.logs.linequeue import LineQueue
from device.logs.record import LogLine
from device.logs.syslog_parse import parse_syslog

log = logging.getLogger(__name__)

SyslogStatus = Literal["starting", "running", "stopped", "failed"]

#: Longest octet count accepted ("999999999 " is already far beyond any sane limit).
MAX_LENGTH_DIGITS = 9
_RECV_BYTES = 65_536


@dataclass(frozen=True)
class SyslogOptions:
    """Where to listen and the limits; a port of None disables that transport."""

    host: str = "0.0.0.0"
    #: 514 is the standard port but needs root or CAP_NET_BIND_SERVICE.
    udp_port: int | None = 5514
    tcp_port: int | None = 5514
    max_message_bytes: int = 16_384
    max_clients: int = 64
    client_idle_timeout_s: float = 300.0
    queue_lines: int = 10_000
    queue_chars: int = 4_000_000

    def __post_init__(self) -> None:
        if self.udp_port is None and self.tcp_port is None:
            raise ValueError("a syslog source needs a UDP port, a TCP port or both")
        if self.max_message_bytes < 1 or self.max_clients < 1:
            raise ValueError("max_message_bytes and max_clients must be >= 1")


@dataclass(frozen=True)
class SyslogStats:
    udp_messages: int
    tcp_messages: int
    #: Messages without a valid <PRI>, kept as raw text.
    unparsed: int
    invalid_utf8: int
    #: Messages longer than max_message_bytes, cut.
    truncated: int
    #: UDP messages dropped because the queue was full.
    dropped: int
    connections: int
    clients: int
    #: Connections closed at once because max_clients were connected.
    rejected_clients: int
    idle_closed: int
    queue_depth: int
    status: SyslogStatus


class _Framer:
    """RFC 6587 framing for one TCP connection, octet counting or newline, per message."""

    __slots__ = ("_buf", "_digits", "_max", "_remaining", "_size", "_state")

    _START, _LENGTH, _OCTETS, _LINE = range(4)

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._state = self._START
        self._digits = bytearray()
        self._buf = bytearray()
        self._size = 0
        self._remaining = 0

    def _keep(self, chunk: bytes) -> None:
        self._size += len(chunk)
        room = self._max - len(self._buf)
        if room > 0:
            self._buf += chunk[:room]

    def _emit(self, out: list[tuple[bytes, bool]]) -> None:
        out.append((bytes(self._buf), self._size > self._max))
        self._buf.clear()
        self._size = 0
        self._state = self._START

    def feed(self, data: bytes) -> list[tuple[bytes, bool]]:
        """Complete messages in ``data``: (payload, truncated)."""
        out: list[tuple[bytes, bool]] = []
        i, n = 0, len(data)
        while i < n:
            state = self._state
            if state == self._START:
                byte = data[i]
                if byte in b"\r\n\x00 ":
                    i += 1
                elif 0x30 <= byte <= 0x39:
                    self._state = self._LENGTH
                    self._digits.clear()
                else:
                    self._state = self._LINE
            elif state == self._LENGTH:
                byte = data[i]
                if 0x30 <= byte <= 0x39 and len(self._digits) < MAX_LENGTH_DIGITS:
                    self._digits.append(byte)
                    i += 1
                elif byte == 0x20 and self._digits:
                    self._remaining = int(self._digits)
                    i += 1
                    self._state = self._OCTETS
                    if self._remaining == 0:
                        self._state = self._START
                else:
                    # Not an octet count after all: a newline-framed message starting
                    # with digits (or garbage). Keep the digits as its first bytes.
                    self._keep(bytes(self._digits))
                    self._state = self._LINE
            elif state == self._OCTETS:
                take = min(self._remaining, n - i)
                self._keep(data[i : i + take])
                self._remaining -= take
                i += take
                if self._remaining == 0:
                    self._emit(out)
            else:
                newline = data.find(b"\n", i)
                end = n if newline < 0 else newline
                self._keep(data[i:end])
                i = end
                if newline >= 0:
                    i += 1
                    self._emit(out)
        return out

    def flush(self) -> tuple[bytes, bool] | None:
        """The message cut short by the connection closing, if any."""
        if self._state in (self._LINE, self._OCTETS) and self._size:
            payload, truncated = bytes(self._buf), self._size > self._max
            partial = self._state == self._OCTETS
            self._buf.clear()
            self._size = 0
            self._state = self._START
            return payload, truncated or partial
        return None


class _Client:
    __slots__ = ("framer", "last_seen", "origin")

    def __init__(self, origin: str, max_bytes: int, now: float) -> None:
        self.origin = origin
        self.framer = _Framer(max_bytes)
        self.last_seen = now


class SyslogSource:
    """Listens for syslog over UDP and/or TCP; a ``LogSource`` (see record.py)."""

    def __init__(self, name: str, options: SyslogOptions | None = None) -> None:
        self.name = name
        self.options = options or SyslogOptions()
        self._queue = LineQueue(self.options.queue_lines, self.options.queue_chars)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._lock = threading.Lock()
        self._status: SyslogStatus = "starting"
        self._clients = 0
        self._c = dict.fromkeys(
            (
                "udp_messages",
                "tcp_messages",
                "unparsed",
                "invalid_utf8",
                "truncated",
                "dropped",
                "connections",
                "rejected_clients",
                "idle_closed",
            ),
            0,
        )

    # -- public ---------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the sockets (SourceError when that fails) and start serving."""
        if self._threads:
            raise RuntimeError(f"log source {self.name} was already started")
        opts = self.options
        try:
            if opts.udp_port is not None:
                self._udp = self._bind(socket.SOCK_DGRAM, opts.udp_port)
            if opts.tcp_port is not None:
                self._tcp = self._bind(socket.SOCK_STREAM, opts.tcp_port)
                self._tcp.listen(min(opts.max_clients, 128))
                self._tcp.setblocking(False)
        except SourceError:
            self._close_sockets()
            with self._lock:
                self._status = "failed"
            raise
        if self._udp is not None:
            self._spawn(self._serve_udp, "udp")
        if self._tcp is not None:
            self._spawn(self._serve_tcp, "tcp")
        with self._lock:
            self._status = "running"

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        self._queue.close(discard=True)
        for thread in self._threads:
            thread.join(timeout_s)
        self._close_sockets()
        with self._lock:
            if self._status != "failed":
                self._status = "stopped"

    @property
    def udp_address(self) -> tuple[str, int] | None:
        """The bound UDP address (the real port when 0 was asked for)."""
        return _address(self._udp)

    @property
    def tcp_address(self) -> tuple[str, int] | None:
        return _address(self._tcp)

    def get(self, timeout: float | None = None) -> LogLine | None:
        return self._queue.get(timeout)

    def get_batch(self, max_lines: int, timeout: float | None = None) -> list[LogLine]:
        return self._queue.get_batch(max_lines, timeout)

    def ack(self, lines: LogLine | Sequence[LogLine]) -> None:
        """Nothing to remember: a network source has no position to resume from."""

    def stats(self) -> SyslogStats:
        with self._lock:
            c = dict(self._c)
            clients, status = self._clients, self._status
        return SyslogStats(
            udp_messages=c["udp_messages"],
            tcp_messages=c["tcp_messages"],
            unparsed=c["unparsed"],
            invalid_utf8=c["invalid_utf8"],
            truncated=c["truncated"],
            dropped=c["dropped"],
            connections=c["connections"],
            clients=clients,
            rejected_clients=c["rejected_clients"],
            idle_closed=c["idle_closed"],
            queue_depth=len(self._queue),
            status=status,
        )

    # -- sockets ----------------------------------------------------------------------------

    def _bind(self, kind: socket.SocketKind, port: int) -> socket.socket:
        host = self.options.host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        transport = "udp" if kind == socket.SOCK_DGRAM else "tcp"
        sock = socket.socket(family, kind)
        try:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            hint = (
                " Ports below 1024 need root or CAP_NET_BIND_SERVICE: listen on 5514 and "
                "point the senders there."
                if port < 1024
                else " Is another syslog daemon listening there?"
            )
            raise SourceError(
                f"log source {self.name}: cannot listen on {transport} {host}:{port} "
                f"({exc.strerror or exc}).{hint}"
            ) from exc
        return sock

    def _close_sockets(self) -> None:
        for sock in (self._udp, self._tcp):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()

    def _spawn(self, target: Callable[[], None], transport: str) -> None:
        def run() -> None:
            try:
                target()
            except Exception:
                log.exception("log source %s: the %s listener failed", self.name, transport)
                with self._lock:
                    self._status = "failed"

        thread = threading.Thread(target=run, name=f"syslog-{self.name}-{transport}", daemon=True)
        self._threads.append(thread)
        thread.start()

    # -- messages ---------------------------------------------------------------------------

    def _line(self, payload: bytes, origin: str, truncated: bool, now: float) -> LogLine:
        parsed = parse_syslog(payload, now)
        with self._lock:
            self._c["unparsed"] += int(parsed.meta is None)
            self._c["invalid_utf8"] += int(parsed.invalid_utf8)
            self._c["truncated"] += int(truncated)
        return LogLine(
            self.name,
            origin,
            parsed.text,
            now,
            truncated=truncated,
            invalid_utf8=parsed.invalid_utf8,
            meta=parsed.meta,
        )

    def _serve_udp(self) -> None:
        sock = self._udp
        assert sock is not None
        sock.settimeout(0.25)
        limit = self.options.max_message_bytes
        while not self._stop.is_set():
            try:
                data, peer = sock.recvfrom(_RECV_BYTES)
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                raise
            truncated = len(data) > limit
            line = self._line(data[:limit], f"udp:{peer[0]}:{peer[1]}", truncated, time.time())
            accepted = self._queue.offer(line)
            with self._lock:
                self._c["udp_messages"] += 1
                self._c["dropped"] += int(not accepted)

    def _serve_tcp(self) -> None:
        listener = self._tcp
        assert listener is not None
        opts = self.options
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ, None)
        clients: dict[socket.socket, _Client] = {}
        next_sweep = time.monotonic() + 1.0
        try:
            while not self._stop.is_set():
                for key, _ in selector.select(0.25):
                    if key.data is None:
                        self._accept(listener, selector, clients)
                    else:
                        conn = cast(socket.socket, key.fileobj)
                        self._receive(conn, key.data, selector, clients)
                now = time.monotonic()
                if now >= next_sweep:
                    next_sweep = now + 1.0
                    for conn, client in list(clients.items()):
                        if now - client.last_seen >= opts.client_idle_timeout_s:
                            with self._lock:
                                self._c["idle_closed"] += 1
                            self._drop(conn, selector, clients)
        finally:
            for conn in list(clients):
                self._drop(conn, selector, clients, flush=False)
            selector.close()

    def _accept(
        self,
        listener: socket.socket,
        selector: selectors.BaseSelector,
        clients: dict[socket.socket, _Client],
    ) -> None:
        try:
            conn, peer = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("log source %s: accept failed (%s)", self.name, exc)
            return
        if len(clients) >= self.options.max_clients:
            conn.close()
            with self._lock:
                self._c["rejected_clients"] += 1
            return
        conn.setblocking(False)
        client = _Client(
            f"tcp:{peer[0]}:{peer[1]}", self.options.max_message_bytes, time.monotonic()
        )
        clients[conn] = client
        selector.register(conn, selectors.EVENT_READ, client)
        with self._lock:
            self._c["connections"] += 1
            self._clients = len(clients)

    def _receive(
        self,
        conn: socket.socket,
        client: _Client,
        selector: selectors.BaseSelector,
        clients: dict[socket.socket, _Client],
    ) -> None:
        try:
            data = conn.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn, selector, clients)
            return
        client.last_seen = time.monotonic()
        frames = client.framer.feed(data)
        if frames:
            self._deliver(frames, client.origin)

    def _deliver(self, frames: list[tuple[bytes, bool]], origin: str) -> None:
        now = time.time()
        lines = [self._line(payload, origin, truncated, now) for payload, truncated in frames]
        with self._lock:
            self._c["tcp_messages"] += len(lines)
        # Waiting here is the back-pressure: unread data stays in the kernel buffers and
        # the senders' TCP windows close.
        self._queue.put_wait(lines, self._stop)

    def _drop(
        self,
        conn: socket.socket,
        selector: selectors.BaseSelector,
        clients: dict[socket.socket, _Client],
        flush: bool = True,
    ) -> None:
        client = clients.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(conn)
        with contextlib.suppress(OSError):
            conn.close()
        with self._lock:
            self._clients = len(clients)
        if client is not None and flush:
            rest = client.framer.flush()
            if rest is not None:
                self._deliver([rest], client.origin)


def _address(sock: socket.socket | None) -> tuple[str, int] | None:
    if sock is None:
        return None
    try:
        host, port = sock.getsockname()[:2]
    except OSError:
        return None
    return str(host), int(port)
