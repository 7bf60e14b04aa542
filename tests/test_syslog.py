"""Syslog: RFC 3164/5424 parsing, and the listener over real UDP and TCP sockets."""

from __future__ import annotations

import os
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest

from device.errors import SourceError
from device.logs.record import LogLine, SdElement
from device.logs.syslog import SyslogOptions, SyslogSource
from device.logs.syslog_parse import parse_syslog

RFC5424_SU = (
    "<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - "
    "\ufeff'su root' failed for lonvick on /dev/pts/8"
)
RFC5424_SD = (
    "<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 "
    '[exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"] '
    "An application event log entry"
)
RFC3164_SU = "<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8"


# -- parsing ------------------------------------------------------------------------------


def test_rfc5424_header_and_bom() -> None:
    parsed = parse_syslog(RFC5424_SU.encode())
    meta = parsed.meta
    assert meta is not None and meta.format == "rfc5424"
    assert (meta.facility, meta.severity) == (4, 2)
    assert meta.hostname == "mymachine.example.com" and meta.app == "su"
    assert meta.procid is None and meta.msgid == "ID47" and meta.structured_data == ()
    assert meta.timestamp == pytest.approx(
        datetime(2003, 10, 11, 22, 14, 15, 3000, tzinfo=timezone.utc).timestamp()
    )
    assert parsed.text == "'su root' failed for lonvick on /dev/pts/8"


def test_rfc5424_structured_data_with_escapes_and_offsets() -> None:
    parsed = parse_syslog(RFC5424_SD.encode())
    assert parsed.meta is not None
    assert parsed.meta.structured_data == (
        SdElement("exampleSDID@32473",
                  (("iut", "3"), ("eventSource", "Application"), ("eventID", "1011"))),
    )  # fmt: skip
    assert parsed.text == "An application event log entry"

    escaped = parse_syslog(
        b"<14>1 2003-08-24T05:14:15.000003-07:00 host app 123 - "
        b'[a@1 k="say \\"hi\\" \\] \\\\ done"][b@2] msg [not sd]'
    )
    meta = escaped.meta
    assert meta is not None and meta.procid == "123" and meta.msgid is None
    assert meta.structured_data == (SdElement("a@1", (("k", 'say "hi" ] \\ done'),)),
                                    SdElement("b@2"))  # fmt: skip
    assert escaped.text == "msg [not sd]"
    assert meta.timestamp == pytest.approx(
        datetime(2003, 8, 24, 12, 14, 15, 3, tzinfo=timezone.utc).timestamp()
    )
    broken = parse_syslog(b'<14>1 - host app - - [unterminated k="v" the rest')
    assert broken.meta is not None and broken.meta.structured_data == ()
    assert broken.text == '[unterminated k="v" the rest'


def test_rfc3164_variants() -> None:
    now = datetime(2024, 6, 1, 12, 0, 0).timestamp()
    su = parse_syslog(RFC3164_SU.encode(), now)
    assert su.meta is not None and su.meta.format == "rfc3164"
    assert su.meta.hostname == "mymachine" and su.meta.app == "su"
    assert su.text == "'su root' failed for lonvick on /dev/pts/8"
    assert su.meta.timestamp == datetime(2023, 10, 11, 22, 14, 15).timestamp()

    bfg = parse_syslog(b"<13>Feb  5 17:32:18 10.0.0.99 Use the BFG!", now)
    assert bfg.meta is not None and bfg.meta.hostname == "10.0.0.99"
    assert bfg.meta.app is None and bfg.text == "Use the BFG!"
    assert bfg.meta.timestamp == datetime(2024, 2, 5, 17, 32, 18).timestamp()

    no_host = parse_syslog(b"<30>Oct 11 22:14:15 sshd[123]: Accepted publickey", now)
    assert no_host.meta is not None and no_host.meta.hostname is None
    assert (no_host.meta.app, no_host.meta.procid) == ("sshd", "123")
    assert (no_host.meta.facility, no_host.meta.severity) == (3, 6)
    assert no_host.text == "Accepted publickey"

    no_time = parse_syslog(b"<13>myapp: hello there\n")
    assert no_time.meta is not None and no_time.meta.timestamp is None
    assert no_time.meta.app == "myapp" and no_time.text == "hello there"

    iso = parse_syslog(b"<13>2024-01-02T03:04:05+00:00 router kernel: link up")
    assert iso.meta is not None and iso.meta.hostname == "router"
    assert iso.meta.app == "kernel" and iso.text == "link up"
    assert iso.meta.timestamp == datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc).timestamp()


def test_year_is_inferred_for_old_december_messages() -> None:
    new_year = datetime(2025, 1, 1, 0, 0, 30).timestamp()
    parsed = parse_syslog(b"<13>Dec 31 23:59:59 host app: late", new_year)
    assert parsed.meta is not None
    assert parsed.meta.timestamp == datetime(2024, 12, 31, 23, 59, 59).timestamp()


@pytest.mark.parametrize(
    "raw", [b"no priority at all", b"<999>priority out of range", b"<abc>x", b"", b"\xff\xfe"]
)
def test_unparsable_messages_are_kept_raw(raw: bytes) -> None:
    parsed = parse_syslog(raw)
    assert parsed.meta is None
    assert parsed.text == raw.decode("utf-8", "replace")


# -- the listener -------------------------------------------------------------------------


@pytest.fixture
def source() -> Iterator[SyslogSource]:
    options = SyslogOptions(host="127.0.0.1", udp_port=0, tcp_port=0, max_message_bytes=4096,
                            max_clients=8, client_idle_timeout_s=0.5)  # fmt: skip
    listener = SyslogSource("syslog", options)
    listener.start()
    yield listener
    listener.stop()


def collect(source: SyslogSource, count: int, timeout_s: float = 10.0) -> list[LogLine]:
    lines: list[LogLine] = []
    deadline = time.monotonic() + timeout_s
    while len(lines) < count and time.monotonic() < deadline:
        lines.extend(source.get_batch(1000, timeout=0.1))
    return lines


def tcp_client(source: SyslogSource) -> socket.socket:
    address = source.tcp_address
    assert address is not None
    return socket.create_connection(address, timeout=5)


def test_udp_messages_in_both_formats(source: SyslogSource) -> None:
    address = source.udp_address
    assert address is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.bind(("127.0.0.1", 0))
        for message in (RFC5424_SU, RFC3164_SU, "garbage without a header\n"):
            sender.sendto(message.encode(), address)
        port = sender.getsockname()[1]
        lines = collect(source, 3)
    assert [line.meta.format if line.meta else None for line in lines] == [
        "rfc5424", "rfc3164", None,
    ]  # fmt: skip
    assert lines[2].text == "garbage without a header"
    assert {line.origin for line in lines} == {f"udp:127.0.0.1:{port}"}
    stats = source.stats()
    assert stats.udp_messages == 3 and stats.unparsed == 1


def test_tcp_newline_framing_split_anywhere(source: SyslogSource) -> None:
    messages = [f"<13>Oct 11 22:14:15 host app[{n}]: message {n}" for n in range(50)]
    stream = "".join(m + "\n" for m in messages).encode()
    with tcp_client(source) as conn:
        conn.sendall(stream[:1000])
        for offset in range(1000, 1200):  # a stretch one byte at a time
            conn.sendall(stream[offset : offset + 1])
        conn.sendall(stream[1200:])
        lines = collect(source, 50)
    assert [line.text for line in lines] == [f"message {n}" for n in range(50)]
    assert [line.meta.procid for line in lines if line.meta] == [str(n) for n in range(50)]


def test_tcp_octet_counting_and_mixed_framing(source: SyslogSource) -> None:
    multi = "<14>1 - host app - - - first line\nsecond line of the same message"
    frames = [multi, RFC5424_SD, RFC5424_SU]
    octets = b"".join(b"%d %s" % (len(f.encode()), f.encode()) for f in frames)
    with tcp_client(source) as conn:
        conn.sendall(octets + (RFC3164_SU + "\n").encode() + octets[:40])
        conn.sendall(octets[40:])
        lines = collect(source, 7)
    texts = [line.text for line in lines]
    assert texts[0] == "first line\nsecond line of the same message"
    assert texts[1] == "An application event log entry"
    assert texts[3] == "'su root' failed for lonvick on /dev/pts/8"
    assert texts[4:] == texts[:3]
    assert source.stats().tcp_messages == 7 and source.stats().unparsed == 0


def test_oversized_messages_are_cut_with_bounded_memory(source: SyslogSource) -> None:
    big = b"<13>app: " + b"z" * 5_000_000
    octet_counted = b"%d %s" % (len(big), big)
    newline_framed = big + b"\n"
    tracemalloc.start()
    try:
        with tcp_client(source) as conn:
            conn.sendall(octet_counted)
            conn.sendall(newline_framed)
            conn.sendall(b"<13>app: small after\n")
            lines = collect(source, 3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    address = source.udp_address
    assert address is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"<13>app: " + b"u" * 60_000, address)
        lines += collect(source, 1)
    assert [line.truncated for line in lines] == [True, True, False, True]
    assert len(lines[0].text) == 4096 - len("<13>app: ") and lines[2].text == "small after"
    assert source.stats().truncated == 3
    # The 5 MB messages are never held whole on the receiving side.
    assert peak < 1_000_000, peak


def test_binary_garbage_over_tcp_is_never_fatal(source: SyslogSource) -> None:
    with tcp_client(source) as conn:
        conn.sendall(os.urandom(300_000))
    with tcp_client(source) as conn:
        conn.sendall(b"\xff\xfe<13>bad bytes \xc3\n" + (RFC3164_SU + "\n").encode())
        deadline = time.monotonic() + 10
        lines: list[LogLine] = []
        while time.monotonic() < deadline and not any(
            line.text.startswith("'su root'") for line in lines
        ):
            lines.extend(source.get_batch(1000, timeout=0.1))
    assert source.stats().status == "running"
    assert source.stats().unparsed >= 1 and source.stats().invalid_utf8 >= 1


def test_many_clients_at_once(source: SyslogSource) -> None:
    def send(client: int) -> None:
        with tcp_client(source) as conn:
            for n in range(200):
                conn.sendall(f"<13>app: client {client} line {n}\n".encode())

    threads = [threading.Thread(target=send, args=(client,)) for client in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = collect(source, 1200)
    assert len(lines) == 1200
    for client in range(6):
        mine = [line.text for line in lines if line.text.startswith(f"client {client} ")]
        assert mine == [f"client {client} line {n}" for n in range(200)]


def test_client_limit_and_idle_timeout(source: SyslogSource) -> None:
    held = [tcp_client(source) for _ in range(8)]
    try:
        deadline = time.monotonic() + 5
        while source.stats().clients < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        extra = tcp_client(source)
        extra.settimeout(5)
        assert extra.recv(10) == b""  # closed by the server at once
        extra.close()
        assert source.stats().rejected_clients == 1
        # The idle ones (a slow-loris sends nothing) are closed after the idle timeout.
        held[0].sendall(b"<13>app: half a mess")
        for conn in held:
            conn.settimeout(5)
            assert conn.recv(10) == b""
        # The server closes a socket before it updates its counts: let it finish.
        deadline = time.monotonic() + 5
        while source.stats().clients and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = source.stats()
        assert stats.idle_closed == 8 and stats.clients == 0
        # What the closed connection had sent of its last message is handed out.
        lines = collect(source, 1)
        assert lines[0].text == "half a mess"
    finally:
        for conn in held:
            conn.close()


def test_bind_failure_is_a_clear_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        listener = SyslogSource("syslog", SyslogOptions(host="127.0.0.1", udp_port=port,
                                                        tcp_port=None))  # fmt: skip
        with pytest.raises(SourceError, match=f"cannot listen on udp 127.0.0.1:{port}"):
            listener.start()
        assert listener.stats().status == "failed"
