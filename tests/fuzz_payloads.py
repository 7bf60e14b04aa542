"""Random and malformed MQTT payloads for the fuzz tests, from a seeded generator.

The mix leans on what breaks parsers in practice: truncated and binary data, wrong
types in otherwise valid documents, extreme numbers, deep nesting, oversized messages
and near-miss field names, besides plain random bytes.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

#: Fields the command models know, with values of the right type, to mutate from.
COMMAND_FIELDS: dict[str, object] = {
    "source": "desk",
    "label": "circle",
    "threshold": 0.5,
    "pipeline": "shapes",
    "max_width": 320,
    "quality": 70,
    "request_id": "r1",
}

ODD_VALUES: tuple[object, ...] = (
    None,
    True,
    -1,
    0,
    2**63,
    -(2**70),
    1e308,
    -0.0,
    "",
    " ",
    "x" * 5000,
    "\u0000",
    "\ud7ff\ue000",
    "../../etc/passwd",
    [],
    {},
    [1, "a", None],
    {"nested": {"deeper": [1, 2, 3]}},
)


def _random_value(rng: random.Random) -> object:
    roll = rng.random()
    if roll < 0.4:
        return rng.choice(ODD_VALUES)
    if roll < 0.6:
        return rng.uniform(-10, 10)
    if roll < 0.8:
        return "".join(chr(rng.randint(1, 0x2FFF)) for _ in range(rng.randint(0, 20)))
    return rng.randint(-1000, 1000)


def _document(rng: random.Random) -> dict[str, object]:
    keys = rng.sample(sorted(COMMAND_FIELDS), rng.randint(0, len(COMMAND_FIELDS)))
    document: dict[str, object] = {}
    for key in keys:
        document[key] = COMMAND_FIELDS[key] if rng.random() < 0.5 else _random_value(rng)
    if rng.random() < 0.2:
        document[rng.choice(["sourc", "Threshold", "label ", "extra", "__class__"])] = 1
    return document


def random_payload(rng: random.Random) -> bytes:
    """One payload; roughly a third are well-formed JSON objects with bad contents."""
    kind = rng.randrange(10)
    if kind == 0:
        return rng.randbytes(rng.randint(0, 512))
    if kind == 1:
        text = json.dumps(_document(rng))
        return text[: rng.randint(0, len(text))].encode()  # truncated
    if kind == 2:
        depth = rng.choice([50, 5000, 100_000])
        return ("[" * depth + "]" * rng.choice([0, depth])).encode()
    if kind == 3:
        return json.dumps(_random_value(rng)).encode()  # not an object
    if kind == 4:
        return rng.choice([b"", b" ", b"null", b"NaN", b"Infinity", b"{}", b"{\"a\":}"])
    if kind == 5:
        return b"{" + b'"k":1,' * rng.randint(10_000, 20_000) + b'"k":2}'  # oversized
    if kind == 6:
        return json.dumps(_document(rng)).encode("utf-16")
    return json.dumps(_document(rng), allow_nan=True).encode()


def payloads(seed: int, count: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    for _ in range(count):
        yield random_payload(rng)


def _chunk_frame(header: object, data: bytes, declared_length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    length = len(raw) if declared_length is None else declared_length
    return b"EWC1" + length.to_bytes(4, "big") + raw + data


def _chunk_header(rng: random.Random) -> dict[str, object]:
    """A chunk header, valid-looking or with one or more fields made wrong."""
    size = rng.choice([1, 100, 4096, 10**6, 10**12])
    header: dict[str, object] = {
        "transfer_id": "".join(rng.choice("0123456789abcdef") for _ in range(32)),
        "index": rng.randint(0, 5),
        "count": rng.choice([1, 2, 6, 10**9]),
        "offset": rng.choice([0, 10, size, size + 1]),
        "size": size,
        "sha256": "".join(rng.choice("0123456789abcdef") for _ in range(64)),
    }
    for _ in range(rng.randint(0, 2)):
        header[rng.choice(sorted(header))] = _random_value(rng)
    return header


def random_push_payload(rng: random.Random) -> bytes:
    """One payload for a push topic: broken bundles and broken chunk frames."""
    kind = rng.randrange(8)
    if kind == 0:
        return rng.randbytes(rng.randint(0, 2048))
    if kind == 1:
        return b"PK\x03\x04" + rng.randbytes(rng.randint(0, 4096))  # not a real zip
    if kind == 2:
        return b"EWC1" + rng.randbytes(rng.randint(0, 8))  # truncated preamble
    if kind == 3:
        header = json.dumps(_chunk_header(rng)).encode()
        return _chunk_frame(header, b"", declared_length=rng.choice([0, 2**32 - 1, 5000]))
    if kind == 4:
        nested = b"[" * rng.choice([100, 3000]) + b"]" * rng.choice([0, 100])
        return _chunk_frame(nested, b"x")
    if kind == 5:
        return _chunk_frame(rng.randbytes(rng.randint(1, 64)), b"data")
    return _chunk_frame(_chunk_header(rng), rng.randbytes(rng.randint(0, 4096)))


def push_payloads(seed: int, count: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    for _ in range(count):
        yield random_push_payload(rng)
