"""Pushed bundles in, whole or in chunks; reassembled in part files under ``incoming/``.

A message on a push topic is either a whole bundle (it starts with the zip magic
``PK\\x03\\x04``; its transfer id is the first 32 hex digits of its sha256) or a chunk
frame: ``b"EWC1"``, a 4-byte big-endian header length, the JSON header
(:class:`~device.mqtt.payloads.PushChunk`) and the chunk's bytes. Anything else is not a
push.

Chunks go straight to ``<incoming>/<transfer_id>.part`` at their offset, and which
chunks have arrived is kept beside it (``<transfer_id>.json``), so a transfer survives a
lost connection on either side and even a daemon restart: the sender asks what is
missing and sends only that. Duplicates are ignored; a chunk whose header disagrees with
its transfer's (another size, count or sha256, a range outside the bundle) is refused
without harming the transfer. When every chunk is there, the bytes are checked against
the header's sha256 before anyone looks at them. Transfers are bounded in size (the
model cap), in number, and in age: one idle longer than the expiry is deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from device.mqtt.payloads import PushChunk

log = logging.getLogger(__name__)

ZIP_MAGIC = b"PK\x03\x04"
CHUNK_MAGIC = b"EWC1"
MAX_HEADER_BYTES = 4096
MAX_CHUNKS = 65_536
#: Progress messages list at most this many missing chunk indices.
MISSING_LIMIT = 64
PART_SUFFIX = ".part"
META_SUFFIX = ".json"


class PushFormatError(ValueError):
    """A message on a push topic that is neither a bundle nor a valid chunk frame."""

    def __init__(self, reason: str, transfer_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transfer_id = transfer_id


@dataclass(frozen=True)
class PushMessage:
    """A parsed push message: a chunk with its header (a whole bundle is one chunk)."""

    header: PushChunk
    data: bytes
    whole: bool


def transfer_id_of(sha256_hex: str) -> str:
    return sha256_hex[:32]


def parse_push(payload: bytes) -> PushMessage:
    """Classify and parse one push payload; PushFormatError says why it is not one."""
    if payload.startswith(ZIP_MAGIC):
        digest = hashlib.sha256(payload).hexdigest()
        header = PushChunk(
            transfer_id=transfer_id_of(digest),
            index=0,
            count=1,
            offset=0,
            size=len(payload),
            sha256=digest,
        )
        return PushMessage(header=header, data=payload, whole=True)
    if not payload.startswith(CHUNK_MAGIC):
        raise PushFormatError("not a bundle (no zip magic) and not a chunk frame (no EWC1 magic)")
    if len(payload) < 8:
        raise PushFormatError("chunk frame shorter than its 8-byte preamble")
    (length,) = struct.unpack(">I", payload[4:8])
    if length > MAX_HEADER_BYTES or 8 + length > len(payload):
        raise PushFormatError(f"chunk header length {length} is impossible for this frame")
    raw = payload[8 : 8 + length]
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PushFormatError(f"chunk header is not UTF-8 JSON ({exc})") from exc
    except RecursionError as exc:  # "[[[[..." deeper than the parser's recursion limit
        raise PushFormatError("chunk header is JSON nested too deeply") from exc
    try:
        header = PushChunk.model_validate(document)
    except ValidationError as exc:
        tid = document.get("transfer_id") if isinstance(document, dict) else None
        readable = tid if isinstance(tid, str) and len(tid) == 32 else None
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'header'}: {e['msg']}" for e in exc.errors()
        )
        raise PushFormatError(f"invalid chunk header: {problems}", readable) from exc
    return PushMessage(header=header, data=payload[8 + length :], whole=False)


def encode_chunk(header: PushChunk, data: bytes) -> bytes:
    """The wire form of one chunk (what the pusher sends)."""
    raw = header.model_dump_json().encode("utf-8")
    return CHUNK_MAGIC + struct.pack(">I", len(raw)) + raw + data


class _Meta(BaseModel):
    """``<transfer_id>.json``: what a part file holds so far."""

    model_config = ConfigDict(extra="forbid")

    transfer_id: str
    sha256: str
    size: int
    count: int
    started_at: float
    #: index -> [offset, length] of every chunk written.
    chunks: dict[int, tuple[int, int]]


@dataclass
class Transfer:
    """One bundle being reassembled (mutable; owned by the model service's thread)."""

    transfer_id: str
    sha256: str
    size: int
    count: int
    part: Path
    started_at: float
    last_activity: float
    chunks: dict[int, tuple[int, int]] = field(default_factory=dict)

    @property
    def received(self) -> int:
        return len(self.chunks)

    @property
    def complete(self) -> bool:
        return len(self.chunks) == self.count

    def missing(self, limit: int = MISSING_LIMIT) -> tuple[int, ...]:
        out: list[int] = []
        for index in range(self.count):
            if index not in self.chunks:
                out.append(index)
                if len(out) >= limit:
                    break
        return tuple(out)


@dataclass(frozen=True)
class ChunkOutcome:
    transfer: Transfer | None
    duplicate: bool = False
    #: This chunk was refused (the transfer, if any, goes on); why.
    refused: str = ""
    #: First chunk of a transfer not seen before.
    new: bool = False


class Reassembler:
    """Part files under ``directory``; not thread-safe (the model service's thread)."""

    def __init__(
        self, directory: Path, max_bytes: int, max_transfers: int, expire_s: float
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_transfers = max_transfers
        self.expire_s = expire_s
        self.transfers: dict[str, Transfer] = {}

    def open(self) -> Reassembler:
        """Pick up transfers a previous run left; drop broken or stale ones."""
        self.directory.mkdir(parents=True, exist_ok=True)
        now = time.time()
        for meta_path in self.directory.glob(f"*{META_SUFFIX}"):
            transfer = self._load(meta_path)
            if transfer is None or now - transfer.last_activity > self.expire_s:
                self._remove_files(meta_path.stem)
                continue
            self.transfers[transfer.transfer_id] = transfer
            log.info(
                "resuming push %s: %d of %d chunk(s) kept from before the restart",
                transfer.transfer_id, transfer.received, transfer.count,
            )  # fmt: skip
        known = set(self.transfers)
        for part in self.directory.glob(f"*{PART_SUFFIX}"):
            if part.stem not in known:
                part.unlink(missing_ok=True)
        return self

    def _load(self, meta_path: Path) -> Transfer | None:
        try:
            meta = _Meta.model_validate_json(meta_path.read_bytes())
        except (OSError, ValueError) as exc:
            log.info("discarding unreadable push state %s (%s)", meta_path.name, exc)
            return None
        part = self.directory / f"{meta.transfer_id}{PART_SUFFIX}"
        if not part.is_file() or part.stat().st_size != meta.size:
            return None
        return Transfer(
            transfer_id=meta.transfer_id,
            sha256=meta.sha256,
            size=meta.size,
            count=meta.count,
            part=part,
            started_at=meta.started_at,
            last_activity=meta_path.stat().st_mtime,
            chunks=dict(meta.chunks),
        )

    def accept(self, header: PushChunk, data: bytes, now: float) -> ChunkOutcome:
        """Store one chunk; the outcome says whether it was new, a repeat or refused."""
        tid = header.transfer_id
        transfer = self.transfers.get(tid)
        if transfer is None:
            problem = self._check_new(header)
            if problem:
                return ChunkOutcome(None, refused=problem)
            transfer = self._start(header, now)
            new = True
        else:
            new = False
            if (header.size, header.count, header.sha256) != (
                transfer.size,
                transfer.count,
                transfer.sha256,
            ):
                return ChunkOutcome(
                    transfer,
                    refused=f"chunk {header.index} disagrees with transfer {tid}'s header "
                    f"(size/count/sha256); ignored",
                )
        problem = self._check_range(header, data)
        if problem:
            return ChunkOutcome(transfer, refused=problem, new=new)
        transfer.last_activity = now
        seen = transfer.chunks.get(header.index)
        if seen is not None:
            if seen != (header.offset, len(data)):
                return ChunkOutcome(
                    transfer,
                    refused=f"chunk {header.index} repeated with another offset or length; ignored",
                )
            return ChunkOutcome(transfer, duplicate=True)
        with transfer.part.open("r+b") as handle:
            handle.seek(header.offset)
            handle.write(data)
        transfer.chunks[header.index] = (header.offset, len(data))
        self._save(transfer)
        return ChunkOutcome(transfer, new=new)

    def _check_new(self, header: PushChunk) -> str:
        if header.transfer_id != transfer_id_of(header.sha256):
            return "transfer_id is not the first 32 hex digits of sha256"
        if header.size > self.max_bytes:
            return (
                f"bundle of {header.size} bytes is over this device's limit of "
                f"{self.max_bytes} bytes (runtime.max_model_mb)"
            )
        if header.count > min(header.size, MAX_CHUNKS):
            return f"{header.count} chunks for {header.size} bytes is impossible"
        if len(self.transfers) >= self.max_transfers:
            return (
                f"{len(self.transfers)} pushes are already in progress on this device "
                "(models.max_transfers); try again when one has finished"
            )
        return ""

    @staticmethod
    def _check_range(header: PushChunk, data: bytes) -> str:
        if header.index >= header.count:
            return f"chunk index {header.index} is not below count {header.count}"
        if not data:
            return f"chunk {header.index} is empty"
        if header.offset + len(data) > header.size:
            return (
                f"chunk {header.index} ({len(data)} bytes at {header.offset}) runs past the "
                f"bundle's {header.size} bytes"
            )
        return ""

    def _start(self, header: PushChunk, now: float) -> Transfer:
        self.directory.mkdir(parents=True, exist_ok=True)
        part = self.directory / f"{header.transfer_id}{PART_SUFFIX}"
        with part.open("wb") as handle:
            handle.truncate(header.size)
        transfer = Transfer(
            transfer_id=header.transfer_id,
            sha256=header.sha256,
            size=header.size,
            count=header.count,
            part=part,
            started_at=now,
            last_activity=now,
        )
        self.transfers[header.transfer_id] = transfer
        log.info(
            "push %s started: %d bytes in %d chunk(s)", header.transfer_id, header.size,
            header.count,
        )  # fmt: skip
        return transfer

    def _save(self, transfer: Transfer) -> None:
        meta = _Meta(
            transfer_id=transfer.transfer_id,
            sha256=transfer.sha256,
            size=transfer.size,
            count=transfer.count,
            started_at=transfer.started_at,
            chunks=transfer.chunks,
        )
        # Not fsynced: the sha256 check at the end catches anything a crash lost.
        path = self.directory / f"{transfer.transfer_id}{META_SUFFIX}"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(meta.model_dump_json().encode("utf-8"))
        os.replace(tmp, path)

    def take(self, transfer: Transfer) -> bytes:
        """The complete bundle's bytes, checked against its sha256; the transfer's
        files are removed either way. ValueError when the bytes do not match."""
        try:
            ordered = sorted(transfer.chunks.items())
            position = 0
            for index, (offset, length) in ordered:
                if offset != position:
                    raise ValueError(
                        f"chunks do not tile the bundle (chunk {index} starts at {offset}, "
                        f"expected {position})"
                    )
                position += length
            if position != transfer.size:
                raise ValueError(f"chunks hold {position} bytes, the header says {transfer.size}")
            data = transfer.part.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            if digest != transfer.sha256:
                raise ValueError(
                    f"reassembled bundle's sha256 is {digest[:12]}…, the header says "
                    f"{transfer.sha256[:12]}…; push it again"
                )
            return data
        finally:
            self.discard(transfer.transfer_id)

    def discard(self, transfer_id: str) -> None:
        self.transfers.pop(transfer_id, None)
        self._remove_files(transfer_id)

    def _remove_files(self, transfer_id: str) -> None:
        for suffix in (PART_SUFFIX, META_SUFFIX):
            (self.directory / f"{transfer_id}{suffix}").unlink(missing_ok=True)

    def expire(self, now: float) -> list[Transfer]:
        """Delete transfers idle for longer than the expiry; returns them."""
        stale = [t for t in self.transfers.values() if now - t.last_activity > self.expire_s]
        for transfer in stale:
            log.warning(
                "push %s expired after %.0f s without a chunk (%d of %d received)",
                transfer.transfer_id, self.expire_s, transfer.received, transfer.count,
            )  # fmt: skip
            self.discard(transfer.transfer_id)
        return stale
