"""Parsing syslog messages: RFC 5424 and RFC 3164 (the "BSD" format), leniently.

Devices that forward logs (routers, cameras, PLCs, other Linux boxes) rarely follow
either RFC to the letter: hostnames are missing, timestamps are ISO 8601 inside an RFC
3164 frame, tags have no colon. The parser takes what it can recognise and keeps the
rest as the message. A message without a valid ``<PRI>`` is not syslog at all: it is kept
whole as raw text with ``meta = None``, and the listener counts it.

RFC 3164 timestamps have no year and no zone: they are read as local time in the current
year, or the previous one when that would put them more than a day in the future (a
December message arriving in January).
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from device.logs.lines import decode_line
from device.logs.record import LogMeta, SdElement

_PRI = re.compile(r"<(\d{1,3})>")
_ISO = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})"
)
_BSD_TS = re.compile(r"([A-Z][a-z]{2}) {1,2}(\d{1,2}) (\d{2}):(\d{2}):(\d{2})(?: |$)")
_TAG = re.compile(r"([^\s\[\]:]{1,64})(?:\[([^\]\s]{0,128})\])?:(?: |$)")
_MONTHS = {name: index for index, name in enumerate(calendar.month_abbr) if name}
_MAX_PRI = 191


@dataclass(frozen=True)
class ParsedSyslog:
    #: The MSG part when the header was understood, else the whole message.
    text: str
    #: None when the message has no valid <PRI> (not syslog).
    meta: LogMeta | None
    invalid_utf8: bool


def parse_syslog(data: bytes, now: float | None = None) -> ParsedSyslog:
    """Parse one syslog message (without its transport framing)."""
    decoded = decode_line(data.rstrip(b"\r\n\x00"))
    text = decoded.text
    match = _PRI.match(text)
    if match is None or int(match.group(1)) > _MAX_PRI:
        return ParsedSyslog(text, None, decoded.invalid_utf8)
    pri = int(match.group(1))
    rest = text[match.end() :]
    parsed = None
    if rest.startswith("1 "):
        parsed = _parse_5424(rest[2:], pri)
    if parsed is None:
        parsed = _parse_3164(rest, pri, time.time() if now is None else now)
    message, meta = parsed
    return ParsedSyslog(message, meta, decoded.invalid_utf8)


def _nil(value: str) -> str | None:
    return None if value == "-" or not value else value


def _parse_5424(rest: str, pri: int) -> tuple[str, LogMeta] | None:
    fields = rest.split(" ", 5)
    if len(fields) < 5:
        return None
    stamp, host, app, procid, msgid = fields[:5]
    timestamp = None if stamp == "-" else _iso_time(stamp)
    if stamp != "-" and timestamp is None:
        return None
    sd_and_msg = fields[5] if len(fields) == 6 else ""
    structured, message = _parse_structured_data(sd_and_msg)
    if message.startswith("\ufeff"):
        message = message[1:]
    meta = LogMeta(
        format="rfc5424",
        facility=pri >> 3,
        severity=pri & 7,
        hostname=_nil(host),
        app=_nil(app),
        procid=_nil(procid),
        msgid=_nil(msgid),
        timestamp=timestamp,
        structured_data=structured,
    )
    return message, meta


def _parse_structured_data(text: str) -> tuple[tuple[SdElement, ...], str]:
    """SD elements and the message after them; malformed SD is left in the message."""
    if text == "-" or text.startswith("- "):
        return (), text[2:]
    if not text.startswith("["):
        return (), text
    elements: list[SdElement] = []
    i = 0
    size = len(text)
    try:
        while i < size and text[i] == "[":
            end_id = i + 1
            while text[end_id] not in " ]":
                end_id += 1
            sd_id = text[i + 1 : end_id]
            if not sd_id:
                return (), text
            i = end_id
            params: list[tuple[str, str]] = []
            while text[i] == " ":
                eq = text.index("=", i + 1)
                name = text[i + 1 : eq]
                if not name or " " in name or text[eq + 1] != '"':
                    return (), text
                value, i = _sd_value(text, eq + 2)
                params.append((name, value))
            if text[i] != "]":
                return (), text
            i += 1
            elements.append(SdElement(sd_id, tuple(params)))
    except (IndexError, ValueError):
        return (), text
    message = text[i:]
    return tuple(elements), message[1:] if message.startswith(" ") else message


def _sd_value(text: str, start: int) -> tuple[str, int]:
    """A PARAM-VALUE from after its opening quote; returns it and the index after its close."""
    out: list[str] = []
    i = start
    while True:
        char = text[i]
        if char == "\\" and text[i + 1] in '"\\]':
            out.append(text[i + 1])
            i += 2
        elif char == '"':
            return "".join(out), i + 1
        else:
            out.append(char)
            i += 1


def _parse_3164(rest: str, pri: int, now: float) -> tuple[str, LogMeta]:
    timestamp: float | None = None
    stamped = False
    match = _BSD_TS.match(rest)
    if match is not None:
        stamped = True
        timestamp = _bsd_time(match, now)
        rest = rest[match.end() :]
    else:
        iso = _ISO.match(rest)
        if iso is not None and rest[iso.end() : iso.end() + 1] in (" ", ""):
            stamped = True
            timestamp = _iso_time(iso.group(0))
            rest = rest[iso.end() + 1 :]
    hostname = None
    if stamped:
        first, _, remainder = rest.partition(" ")
        # A first word that is a tag ("sshd[42]:") means the sender left the host out.
        if first and remainder and _TAG.fullmatch(first + " ") is None:
            hostname, rest = first, remainder
    app = procid = None
    tag = _TAG.match(rest)
    if tag is not None:
        app, procid = tag.group(1), tag.group(2) or None
        rest = rest[tag.end() :]
    meta = LogMeta(
        format="rfc3164",
        facility=pri >> 3,
        severity=pri & 7,
        hostname=hostname,
        app=app,
        procid=procid,
        timestamp=timestamp,
    )
    return rest, meta


def _iso_time(stamp: str) -> float | None:
    match = _ISO.fullmatch(stamp)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(match.group(n)) for n in range(1, 7))
    fraction = match.group(7) or ""
    zone = match.group(8)
    if zone == "Z":
        tz = timezone.utc
    else:
        sign = 1 if zone[0] == "+" else -1
        tz = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=tz)
    except ValueError:
        return None
    return moment.timestamp() + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)


def _bsd_time(match: re.Match[str], now: float) -> float | None:
    month = _MONTHS.get(match.group(1))
    if month is None:
        return None
    day, hour, minute, second = (int(match.group(n)) for n in range(2, 6))
    year = time.localtime(now).tm_year
    for candidate in (year, year - 1):
        try:
            moment = datetime(candidate, month, day, hour, minute, second)
        except ValueError:
            continue  # 29 February in a year that has none
        stamp = moment.timestamp()  # naive: local time, as RFC 3164 senders mean it
        if stamp <= now + 86_400:
            return stamp
    return None
