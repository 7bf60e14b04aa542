"""Push framing and chunk reassembly, on real part files."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import pytest

from device.modelstore.transfer import (
    CHUNK_MAGIC,
    PushFormatError,
    Reassembler,
    encode_chunk,
    parse_push,
    transfer_id_of,
)
from device.mqtt.payloads import PushChunk

BUNDLE = b"PK\x03\x04" + os.urandom(10_000)
SHA = hashlib.sha256(BUNDLE).hexdigest()
TID = transfer_id_of(SHA)
SIZE = 1024


def chunks(data: bytes = BUNDLE, size: int = SIZE) -> list[bytes]:
    count = -(-len(data) // size)
    sha = hashlib.sha256(data).hexdigest()
    return [
        encode_chunk(
            PushChunk(transfer_id=sha[:32], index=i, count=count, offset=i * size,
                      size=len(data), sha256=sha),
            data[i * size : (i + 1) * size],
        )
        for i in range(count)
    ]  # fmt: skip


def feed(reassembler: Reassembler, frame: bytes, now: float = 0.0):  # type: ignore[no-untyped-def]
    message = parse_push(frame)
    return reassembler.accept(message.header, message.data, now or 1.0)


def test_whole_bundle_and_chunk_frames_parse() -> None:
    whole = parse_push(BUNDLE)
    assert whole.whole and whole.header.transfer_id == TID and whole.header.count == 1
    first = parse_push(chunks()[0])
    assert not first.whole and first.header.index == 0 and first.data == BUNDLE[:SIZE]
    with pytest.raises(PushFormatError, match="no zip magic"):
        parse_push(b"hello")
    with pytest.raises(PushFormatError, match="impossible"):
        parse_push(CHUNK_MAGIC + struct.pack(">I", 10_000) + b"{}")
    bad = b'{"transfer_id": "' + TID.encode() + b'", "index": -1}'
    with pytest.raises(PushFormatError) as exc:
        parse_push(CHUNK_MAGIC + struct.pack(">I", len(bad)) + bad)
    assert exc.value.transfer_id == TID  # readable: the device can answer on progress


def test_reassembly_out_of_order_with_duplicates(tmp_path: Path) -> None:
    reassembler = Reassembler(tmp_path, max_bytes=1 << 20, max_transfers=2, expire_s=60).open()
    frames = chunks()
    order = list(reversed(range(len(frames))))
    outcomes = [feed(reassembler, frames[i]) for i in order[:5]]
    assert outcomes[0].new and not any(o.new for o in outcomes[1:])
    assert feed(reassembler, frames[order[0]]).duplicate
    transfer = outcomes[0].transfer
    assert transfer is not None and transfer.received == 5
    assert transfer.missing(3) == (0, 1, 2)
    for i in order[5:]:
        feed(reassembler, frames[i])
    assert transfer.complete
    assert reassembler.take(transfer) == BUNDLE
    assert list(tmp_path.iterdir()) == []  # part and state files gone


def test_inconsistent_chunks_are_refused_and_the_transfer_goes_on(tmp_path: Path) -> None:
    reassembler = Reassembler(tmp_path, max_bytes=1 << 20, max_transfers=2, expire_s=60).open()
    frames = chunks()
    feed(reassembler, frames[0])
    liar = PushChunk(transfer_id=TID, index=1, count=3, offset=SIZE, size=len(BUNDLE), sha256=SHA)
    outcome = feed(reassembler, encode_chunk(liar, BUNDLE[SIZE : 2 * SIZE]))
    assert "disagrees" in outcome.refused
    beyond = PushChunk(transfer_id=TID, index=9, count=len(frames), offset=len(BUNDLE) - 10,
                       size=len(BUNDLE), sha256=SHA)  # fmt: skip
    assert "runs past" in feed(reassembler, encode_chunk(beyond, b"x" * 100)).refused
    wrong_id = PushChunk(transfer_id="0" * 32, index=0, count=1, offset=0, size=10, sha256=SHA)
    assert "first 32 hex" in feed(reassembler, encode_chunk(wrong_id, b"x" * 10)).refused
    for frame in frames[1:]:
        feed(reassembler, frame)
    transfer = reassembler.transfers[TID]
    assert reassembler.take(transfer) == BUNDLE


def test_limits_size_count_and_age(tmp_path: Path) -> None:
    reassembler = Reassembler(tmp_path, max_bytes=5000, max_transfers=1, expire_s=10).open()
    assert "over this device's limit" in feed(reassembler, chunks()[0]).refused
    small = b"PK\x03\x04" + os.urandom(3000)
    other = b"PK\x03\x04" + os.urandom(3000)
    assert feed(reassembler, chunks(small)[0], now=100.0).new
    assert "already in progress" in feed(reassembler, chunks(other)[0], now=101.0).refused
    expired = reassembler.expire(now=111.0)
    assert [t.transfer_id for t in expired] == [hashlib.sha256(small).hexdigest()[:32]]
    assert feed(reassembler, chunks(other)[0], now=112.0).new


def test_a_transfer_survives_a_restart_and_a_corrupt_part_is_refused(tmp_path: Path) -> None:
    frames = chunks()
    first = Reassembler(tmp_path, max_bytes=1 << 20, max_transfers=2, expire_s=600).open()
    for frame in frames[:4]:
        feed(first, frame)
    second = Reassembler(tmp_path, max_bytes=1 << 20, max_transfers=2, expire_s=600).open()
    transfer = second.transfers[TID]
    assert transfer.received == 4 and transfer.missing(2) == (4, 5)
    for frame in frames[4:]:
        feed(second, frame)
    # Damage the part file behind the reassembler's back: the sha256 check catches it.
    with transfer.part.open("r+b") as handle:
        handle.write(b"XXXX")
    with pytest.raises(ValueError, match="sha256"):
        second.take(transfer)
    assert TID not in second.transfers and list(tmp_path.iterdir()) == []
