"""Masking the variable parts of a log line before template mining.

``Connection from 10.0.0.7 port 51234`` and ``Connection from 10.0.0.9 port 40022`` are
one event with two parameters. Replacing values by placeholders (``<IP>``, ``<NUM>``...)
before mining lets the miner see one template instead of thousands, and keeps the values
for parameter checks.

What is masked (each kind can be switched off):

=============  =========  ===============================================================
kind           becomes    matches
=============  =========  ===============================================================
timestamp      ``<TS>``   at the start of the line only: ISO 8601 (``2024-01-02T03:04:05.6Z``,
                          ``2024-01-02 03:04:05,678``), syslog (``Oct 11 22:14:15``),
                          ``Mon Oct 11 22:14:15 2024``, Apache (``10/Oct/2000:13:55:36
                          -0700``), ``22:14:15.123``; optionally in ``[...]``
uuid           ``<UUID>`` ``550e8400-e29b-41d4-a716-446655440000``
ip             ``<IP>``   IPv4 with an optional ``:port``, IPv6 (with ``::`` or 8 groups)
mac            ``<MAC>``  ``aa:bb:cc:dd:ee:ff``
hex            ``<HEX>``  ``0x1f``, and runs of 8+ hex digits mixing digits and letters
path           ``<PATH>`` ``/var/log/syslog``, ``./x/y``, ``~/z`` (not the ``//`` of URLs)
number         ``<NUM>``  integers and decimals not glued to a word before them: ``42``,
                          ``-3.5``, ``id=7``, ``12ms`` → ``<NUM>ms``; not ``eth0``, ``v1.2``
=============  =========  ===============================================================

Masks never cross whitespace (except the leading timestamp, which becomes one token), so
a masked line has the same tokens as the original, each possibly with placeholders.

Speed: masking is the costliest step of templating, so it works on token *shapes*: every
digit 1-9 is turned into 0 (one bytes translation per line) and what the regular
expressions find in a shape is cached. All the patterns above treat every digit alike,
so the masks found in ``port 51234``'s shape ``port 00000`` hold for every port number;
a line whose tokens were all seen in that shape before costs one dictionary lookup per
token. The cache is bounded (cleared when full).

The patterns are part of a template vocabulary's meaning: ``MASK_VERSION`` changes
whenever they do, and a vocabulary records the version it was mined with.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

log = logging.getLogger(__name__)

MaskKind = Literal["timestamp", "uuid", "ip", "mac", "hex", "path", "number"]
ALL_MASKS: Final[tuple[MaskKind, ...]] = (
    "timestamp",
    "uuid",
    "ip",
    "mac",
    "hex",
    "path",
    "number",
)
MASK_VERSION: Final = 1
PLACEHOLDERS: Final[dict[MaskKind, str]] = {
    "timestamp": "<TS>",
    "uuid": "<UUID>",
    "ip": "<IP>",
    "mac": "<MAC>",
    "hex": "<HEX>",
    "path": "<PATH>",
    "number": "<NUM>",
}

_H = "[0-9a-fA-F]"
_MONTH = r"[A-Z][a-z]{2}"
_CLOCK = r"\d{2}:\d{2}:\d{2}(?:[.,]\d+)?"
_ZONE = r"(?:\s?(?:Z|[+-]\d{2}:?\d{2}))?"
_TIMESTAMP = re.compile(
    r"\[?(?:"
    rf"\d{{4}}[-/]\d{{2}}[-/]\d{{2}}[T ]{_CLOCK}{_ZONE}"
    rf"|(?:{_MONTH}\s)?{_MONTH}\s+\d{{1,2}}\s{_CLOCK}(?:\s\d{{4}})?"
    rf"|\d{{1,2}}/{_MONTH}/\d{{4}}:{_CLOCK}(?:\s[+-]\d{{4}})?"
    rf"|{_CLOCK}"
    r")\]?(?=\s|$)"
)
_PATTERNS: Final[dict[MaskKind, str]] = {
    "uuid": rf"(?<![\w-]){_H}{{8}}-{_H}{{4}}-{_H}{{4}}-{_H}{{4}}-{_H}{{12}}(?![\w-])",
    "ip": (
        r"(?<![\w.:])(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?(?![\w.:])"
        rf"|(?<![\w.:])(?=[\w:.]*::|(?:{_H}{{1,4}}:){{7}}){_H}{{0,4}}(?::{_H}{{0,4}}){{2,7}}"
        r"(?![\w:])"
    ),
    "mac": rf"(?<![\w:]){_H}{{2}}(?::{_H}{{2}}){{5}}(?![\w:])",
    "hex": (
        rf"(?<!\w)0[xX]{_H}+(?!\w)"
        rf"|(?<![\w-])(?={_H}*\d)(?={_H}*[a-fA-F]){_H}{{8,}}(?![\w-])"
    ),
    "path": r"(?<![\w/.~:-])(?:~|\.{1,2})?(?:/[\w.@%+~-]+)+/?",
    "number": r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?!\d|\.\d)",
}

#: Where masks go in a token: (start, end, kind) for each.
_Spans = tuple[tuple[int, int, MaskKind], ...]


@dataclass(frozen=True, slots=True)
class MaskedValue:
    """One value a mask replaced."""

    kind: MaskKind
    value: str


@dataclass(frozen=True, slots=True)
class MaskedToken:
    """A token of the line, its masked form and the values the masks replaced in it."""

    original: str
    masked: str
    values: tuple[MaskedValue, ...]


class Masker:
    """Masks lines token by token; see the module docstring. Not thread-safe (its cache):
    use one per thread."""

    def __init__(
        self,
        kinds: Sequence[MaskKind] = ALL_MASKS,
        extra_delimiters: str = "",
        cache_size: int = 100_000,
    ) -> None:
        unknown = set(kinds) - set(ALL_MASKS)
        if unknown:
            raise ValueError(f"unknown mask kinds {sorted(unknown)}; known: {ALL_MASKS}")
        if any(not (c.isascii() and c.isprintable()) or c.isspace() for c in extra_delimiters):
            raise ValueError("extra_delimiters must be printable ASCII, non-space characters")
        self.kinds = tuple(kind for kind in ALL_MASKS if kind in kinds)
        self.extra_delimiters = extra_delimiters
        self._timestamp = "timestamp" in self.kinds
        token_kinds = [kind for kind in self.kinds if kind != "timestamp"]
        self._regex = (
            re.compile("|".join(f"(?P<{kind}>{_PATTERNS[kind]})" for kind in token_kinds))
            if token_kinds
            else None
        )
        delimiters = extra_delimiters.encode("ascii")
        spaces = b" " * len(delimiters)
        self._shape = bytes.maketrans(b"123456789" + delimiters, b"000000000" + spaces)
        self._delimit = bytes.maketrans(delimiters, spaces)
        self._cache: dict[str, str | _Spans] = {}
        self._cache_size = cache_size

    def tokens(self, line: str) -> list[str]:
        """The masked tokens of ``line`` (the miner's input)."""
        prefix, line = self._split_timestamp(line)
        raw = line.encode("utf-8", "surrogatepass")
        shapes = raw.translate(self._shape).decode("utf-8", "surrogatepass").split()
        if self.extra_delimiters:
            line = raw.translate(self._delimit).decode("utf-8", "surrogatepass")
        cache = self._cache
        out = [prefix] if prefix else []
        append = out.append
        for token, shape in zip(line.split(), shapes, strict=True):
            found = cache.get(shape)
            if found is None:
                found = self._analyse(shape)
            if found.__class__ is str:
                append(found)  # type: ignore[arg-type]
            elif found:
                append(_apply(token, found))  # type: ignore[arg-type]
            else:
                append(token)
        return out

    def mask(self, line: str) -> list[MaskedToken]:
        """Each token with its masked form and the values replaced (slower; for params)."""
        prefix, rest = self._split_timestamp(line)
        out: list[MaskedToken] = []
        if prefix:
            stamp = line[: len(line) - len(rest)].strip()
            out.append(MaskedToken(stamp, prefix, (MaskedValue("timestamp", stamp),)))
        raw = rest.encode("utf-8", "surrogatepass")
        shapes = raw.translate(self._shape).decode("utf-8", "surrogatepass").split()
        if self.extra_delimiters:
            rest = raw.translate(self._delimit).decode("utf-8", "surrogatepass")
        for token, shape in zip(rest.split(), shapes, strict=True):
            spans = self._spans(shape)
            values = tuple(MaskedValue(kind, token[start:end]) for start, end, kind in spans)
            out.append(MaskedToken(token, _apply(token, spans) if spans else token, values))
        return out

    def _split_timestamp(self, line: str) -> tuple[str, str]:
        if self._timestamp:
            match = _TIMESTAMP.match(line)
            if match is not None:
                return PLACEHOLDERS["timestamp"], line[match.end() :]
        return "", line

    def _spans(self, shape: str) -> _Spans:
        if self._regex is None:
            return ()
        return tuple(
            (m.start(), m.end(), m.lastgroup)  # type: ignore[misc]
            for m in self._regex.finditer(shape)
        )

    def _analyse(self, shape: str) -> str | _Spans:
        """What the cache holds for a shape: the masked token itself when every token of
        this shape masks to the same text (no digit outside the masks), else the spans
        (``()`` when nothing is masked) to apply to the original token."""
        spans = self._spans(shape)
        masked = _apply(shape, spans) if spans else shape
        # Placeholders hold no digit: a 0 left in ``masked`` is a digit outside the masks.
        result: str | _Spans = masked if "0" not in masked else spans
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[shape] = result
        return result


def _apply(token: str, spans: _Spans) -> str:
    parts: list[str] = []
    pos = 0
    for start, end, kind in spans:
        parts.append(token[pos:start])
        parts.append(PLACEHOLDERS[kind])
        pos = end
    parts.append(token[pos:])
    return "".join(parts)
