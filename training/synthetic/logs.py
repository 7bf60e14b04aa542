"""Generated application logs and DeepLog-style sessions with known anomalies.

Tests and benchmarks of the log-anomaly model need logs whose normal behaviour is
known exactly and whose anomalies are placed on purpose, without shipping real data.
The application here is a small web shop back end, written the way such a service
logs: one line per step, a header (timestamp, host, ``shop[pid]:``, level), numbers,
paths, addresses and UUIDs in the message. Its behaviour is a handful of workflows
(a request, a background job, a metrics flush) run one after another, with a heartbeat
that may come between any two steps. Every template of the application has a token
count or wording that keeps it apart from the others under the default Drain
parameters, so mining finds exactly ``NORMAL_TEMPLATES`` templates.

Injected anomalies, each marked on the line where it shows:

* ``new-template``: a line of a kind the application never logs normally (a crash, a
  lost connection, a full disk);
* ``skipped-step``: a request that goes from "received" straight to "completed";
* ``out-of-order``: a job that is "finished" right after "queued", before any worker
  took it;
* ``duplicate``: a request "completed" a second time;
* ``parameter``: a normal line whose duration is thousands of times the usual.

Sessions (``write_session_folder``) follow DeepLog's HDFS files: one session a line,
its event ids separated by spaces; abnormal sessions miss a step, repeat a step where
it never repeats, hold an event normal sessions never have, or stop early.

Everything is a function of the seed.
"""

from __future__ import annotations

import csv
import logging
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

AnomalyKind = Literal["new-template", "skipped-step", "out-of-order", "duplicate", "parameter"]
ANOMALY_KINDS: tuple[AnomalyKind, ...] = (
    "new-template",
    "skipped-step",
    "out-of-order",
    "duplicate",
    "parameter",
)
#: Templates the application logs in normal operation (what mining should find).
NORMAL_TEMPLATES = 13
_USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace")
_PATHS = ("/api/cart", "/api/items", "/api/orders", "/api/users/me", "/static/app.js")
_TABLES = ("users", "orders", "items", "carts")
_START = datetime(2024, 5, 1, 8, 0, 0, tzinfo=timezone.utc)


@dataclass(frozen=True)
class InjectedAnomaly:
    #: 0-based index of the line where the anomaly shows.
    line: int
    kind: AnomalyKind


@dataclass(frozen=True)
class GeneratedLog:
    lines: tuple[str, ...]
    anomalies: tuple[InjectedAnomaly, ...]

    @property
    def anomalous_lines(self) -> frozenset[int]:
        return frozenset(a.line for a in self.anomalies)


class _App:
    """Writes the shop's log lines; one instance per generated file."""

    def __init__(self, rng: random.Random, host: str) -> None:
        self.rng = rng
        self.host = host
        self.pid = rng.randint(1000, 60000)
        self.clock = _START + timedelta(seconds=rng.randint(0, 86400))
        self.request_id = rng.randint(1000, 9000)

    # -- formatting ---------------------------------------------------------------------

    def line(self, message: str, level: str = "INFO") -> str:
        self.clock += timedelta(milliseconds=self.rng.randint(1, 400))
        stamp = self.clock.strftime("%Y-%m-%dT%H:%M:%S.") + f"{self.clock.microsecond // 1000:03d}Z"
        return f"{stamp} {self.host} shop[{self.pid}]: {level} {message}"

    def ip(self) -> str:
        r = self.rng
        return f"10.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    # -- the application's messages -----------------------------------------------------

    def received(self, rid: int) -> str:
        method = self.rng.choice(("GET", "POST"))
        return self.line(
            f"request {rid} received: {method} {self.rng.choice(_PATHS)} from {self.ip()}"
        )

    def auth(self) -> str:
        user = self.rng.choice(_USERS)
        if self.rng.random() < 0.8:
            return self.line(f"auth token accepted for user {user}")
        return self.line(
            f"auth session reused for user {user} after {self.rng.randint(1, 3600)} seconds"
        )

    def data(self, slow: bool = False) -> str:
        table = self.rng.choice(_TABLES)
        if slow or self.rng.random() < 0.7:
            took = self.rng.randint(2_000_000, 9_000_000) if slow else self.rng.randint(1, 400)
            return self.line(
                f"db query on {table} returned {self.rng.randint(0, 500)} rows in {took} ms"
            )
        return self.line(f"cache hit for key {table}:{self.rng.randint(1, 99999)}")

    def completed(self, rid: int) -> str:
        return self.line(
            f"request {rid} completed: status {self.rng.choice((200, 201, 204))} in "
            f"{self.rng.randint(2, 900)} ms"
        )

    def heartbeat(self) -> str:
        return self.line(
            f"heartbeat ok: load {self.rng.uniform(0, 4):.2f} memory "
            f"{self.rng.randint(100, 900)} MB"
        )

    def new_template(self) -> str:
        r = self.rng
        kind = r.randrange(3)
        if kind == 0:
            return self.line(
                f"worker {r.randint(1, 8)} crashed: segmentation fault at "
                f"0x{r.getrandbits(48):012x}", "ERROR",
            )  # fmt: skip
        if kind == 1:
            return self.line(
                f"db connection to {self.ip()} lost, retrying in {r.randint(1, 30)} s", "ERROR"
            )
        return self.line(
            f"disk /var/lib/shop is full, {r.randint(1, 999)} writes rejected", "CRITICAL"
        )

    # -- workflows: lists of lines ------------------------------------------------------

    def request(self) -> list[str]:
        self.request_id += 1
        rid = self.request_id
        return [self.received(rid), self.auth(), self.data(), self.completed(rid)]

    def job(self) -> list[str]:
        job = self.uuid()
        lines = [
            self.line(f"job {job} queued with priority {self.rng.randint(1, 9)}"),
            self.line(f"worker {self.rng.randint(1, 8)} picked up job {job}"),
        ]
        for _ in range(self.rng.randint(1, 3)):
            lines.append(self.line(f"job {job} progress {self.rng.randint(1, 99)} percent"))
        lines.append(self.finished(job))
        return lines

    def finished(self, job: str) -> str:
        return self.line(
            f"job {job} finished, {self.rng.randint(1, 5000)} items written to "
            f"/var/lib/shop/exports/{self.rng.randint(1, 99)}.csv"
        )

    def flush(self) -> list[str]:
        return [
            self.line(
                f"flushing metrics buffer: {self.rng.randint(10, 5000)} samples written to "
                "the local store"
            ),
            self.line(f"metrics flushed to /var/lib/shop/metrics/{self.rng.randint(1, 999)}.db"),
        ]

    def workflow(self) -> list[str]:
        draw = self.rng.random()
        if draw < 0.6:
            return self.request()
        if draw < 0.85:
            return self.job()
        return self.flush()

    # -- anomalous workflows: (lines, index of the anomalous line) -----------------------

    def anomalous(self, kind: AnomalyKind) -> tuple[list[str], int]:
        if kind == "new-template":
            return [self.new_template()], 0
        if kind == "skipped-step":
            self.request_id += 1
            return [self.received(self.request_id), self.completed(self.request_id)], 1
        if kind == "out-of-order":
            job = self.uuid()
            return [
                self.line(f"job {job} queued with priority {self.rng.randint(1, 9)}"),
                self.finished(job),
            ], 1
        if kind == "duplicate":
            lines = self.request()
            lines.append(self.completed(self.request_id))
            return lines, len(lines) - 1
        self.request_id += 1
        rid = self.request_id
        return [self.received(rid), self.auth(), self.data(slow=True), self.completed(rid)], 2


def generate_app_log(
    lines: int,
    seed: int,
    anomalies: int = 0,
    *,
    kinds: Sequence[AnomalyKind] = ANOMALY_KINDS,
    host: str = "edge-1",
    heartbeat_rate: float = 0.03,
    quiet_lines: int = 40,
) -> GeneratedLog:
    """About ``lines`` lines of the shop's log with ``anomalies`` injected anomalies.

    Anomalies are spread evenly (kinds in turn), at least ``quiet_lines`` apart, never in
    the first ``quiet_lines`` lines, so every anomaly has normal context on both sides.
    """
    if lines < 1 or anomalies < 0:
        raise ValueError("lines must be positive and anomalies not negative")
    if anomalies and (lines // (anomalies + 1)) < quiet_lines:
        raise ValueError(f"{anomalies} anomalies do not fit {quiet_lines} lines apart in {lines}")
    rng = random.Random(seed)
    app = _App(rng, host)
    out: list[str] = []
    injected: list[InjectedAnomaly] = []
    spacing = lines // (anomalies + 1) if anomalies else lines + 1
    next_at = spacing
    count = 0

    def emit(batch: list[str]) -> None:
        for text in batch:
            out.append(text)
            if rng.random() < heartbeat_rate:
                out.append(app.heartbeat())

    while len(out) < lines:
        if count < anomalies and len(out) >= next_at:
            kind = kinds[count % len(kinds)]
            batch, at = app.anomalous(kind)
            injected.append(InjectedAnomaly(len(out) + at, kind))
            out.extend(batch)  # no heartbeat inside an anomaly: its line index is exact
            count += 1
            next_at += spacing
            continue
        emit(app.workflow())
    return GeneratedLog(lines=tuple(out), anomalies=tuple(injected))


def write_log_folder(
    directory: Path,
    *,
    files: int = 2,
    lines: int = 3000,
    seed: int = 0,
    anomalies: int = 0,
    kinds: Sequence[AnomalyKind] = ANOMALY_KINDS,
) -> dict[str, GeneratedLog]:
    """``DIR/app-<i>.log`` files and, with anomalies, ``DIR/labels.csv`` (file,line,label).

    labels.csv lists every line of every file (1-based line numbers, label 1 for an
    injected anomaly, 0 otherwise), the dataset folder contract of the log-anomaly task.
    """
    directory.mkdir(parents=True, exist_ok=True)
    written: dict[str, GeneratedLog] = {}
    for index in range(files):
        name = f"app-{index + 1}.log"
        generated = generate_app_log(lines, seed=seed * 1000 + index, anomalies=anomalies,
                                     kinds=kinds, host=f"edge-{index + 1}")  # fmt: skip
        (directory / name).write_text("\n".join(generated.lines) + "\n", encoding="utf-8")
        written[name] = generated
    if anomalies:
        with open(directory / "labels.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "line", "label"])
            for name, generated in written.items():
                bad = generated.anomalous_lines
                for number in range(len(generated.lines)):
                    writer.writerow([name, number + 1, 1 if number in bad else 0])
    log.info("wrote %d generated log file(s) to %s", files, directory)
    return written


# -- sessions (DeepLog's format) ---------------------------------------------------------

SessionKind = Literal["missing-step", "extra-repeat", "foreign-event", "truncated"]
_SESSION_KINDS: tuple[SessionKind, ...] = (
    "missing-step",
    "extra-repeat",
    "foreign-event",
    "truncated",
)


def _normal_session(rng: random.Random) -> list[int]:
    """A block's life, HDFS-like: allocate, receive from 3 nodes, verify, maybe replicate
    or delete, close. Events 1..12."""
    events = [1, 2]
    for _ in range(3):
        events += [3, 4]
    if rng.random() < 0.5:
        events += [5] * rng.randint(1, 3)
    events += [6, 6, 6]
    if rng.random() < 0.3:
        events += [7, 8, 8]
    if rng.random() < 0.2:
        events += [9, 10]
    events += [11, 11, 11, 12]
    return events


def _abnormal_session(rng: random.Random, kind: SessionKind) -> list[int]:
    events = _normal_session(rng)
    if kind == "missing-step":
        del events[events.index(2)]
    elif kind == "extra-repeat":
        events.insert(events.index(12), 12)
    elif kind == "foreign-event":
        events.insert(rng.randint(2, len(events) - 1), 13)
    else:
        events = events[: rng.randint(2, 5)]
    return events


def generate_sessions(count: int, seed: int, abnormal: bool = False) -> list[list[int]]:
    rng = random.Random(seed)
    make: Callable[[int], list[int]] = (
        (lambda i: _abnormal_session(rng, _SESSION_KINDS[i % len(_SESSION_KINDS)]))
        if abnormal
        else (lambda i: _normal_session(rng))
    )
    return [make(i) for i in range(count)]


def write_session_folder(
    directory: Path, normal: int = 600, abnormal: int = 100, seed: int = 0
) -> None:
    """``normal.txt`` and ``abnormal.txt``: one session a line, event ids and a space."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, sessions in (
        ("normal.txt", generate_sessions(normal, seed)),
        ("abnormal.txt", generate_sessions(abnormal, seed + 1, abnormal=True)),
    ):
        text = "".join(" ".join(str(e) for e in session) + " \n" for session in sessions)
        (directory / name).write_text(text, encoding="utf-8")
