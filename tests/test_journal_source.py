"""The journal source against a real child process that behaves like ``journalctl -f``.

There is no journald in the test environment, so the child is a small script that
serves a "journal" (a file of JSON entries) with journalctl's options and output: JSON
lines with ``__CURSOR``, ``--after-cursor=``, ``--lines=0|all``, following the file, and
"Failed to seek to cursor" for a cursor it does not know. The source runs it exactly as it
runs journalctl: a real process, killed for real.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from device.logs.journal import JournalOptions, JournalSource
from device.logs.record import LogLine

FAKE_JOURNALCTL = r"""
import json, os, sys, time
journal = sys.argv[1]
exit_after = 0
after = None
since = None
lines_opt = "10"
for arg in sys.argv[2:]:
    if arg.startswith("--fake-exit-after="):
        exit_after = int(arg.split("=", 1)[1])
    elif arg.startswith("--fake-die-first="):
        marker = arg.split("=", 1)[1]
        if not os.path.exists(marker):
            open(marker, "w").close()
            sys.exit(1)
    elif arg.startswith("--since=@"):
        since = int(arg.split("@", 1)[1]) * 1_000_000
    elif arg.startswith("--after-cursor="):
        after = arg.split("=", 1)[1]
    elif arg.startswith("--lines="):
        lines_opt = arg.split("=", 1)[1]
with open(journal, "rb") as f:
    existing = f.read().split(b"\n")[:-1]
open(journal + ".ready", "w").close()  # the backlog is read: new entries count as new
def cursor_of(raw):
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value.get("__CURSOR") if isinstance(value, dict) else None
if after is not None:
    idx = [i for i, raw in enumerate(existing) if cursor_of(raw) == after]
    if not idx:
        print("Failed to seek to cursor: Invalid argument", file=sys.stderr, flush=True)
        sys.exit(1)
    start = idx[0] + 1
elif since is not None:
    def realtime(raw):
        try:
            return int(json.loads(raw)["__REALTIME_TIMESTAMP"])
        except (ValueError, KeyError, TypeError):
            return 0
    old = [i for i, raw in enumerate(existing) if realtime(raw) < since]
    start = old[-1] + 1 if old else 0
elif lines_opt == "all":
    start = 0
else:
    start = len(existing)
out = sys.stdout.buffer
sent = 0
pos = 0
with open(journal, "rb") as f:
    buffered = b""
    index = 0
    while True:
        chunk = f.read()
        if not chunk:
            time.sleep(0.01)
            continue
        buffered += chunk
        *complete, buffered = buffered.split(b"\n")
        for raw in complete:
            if index >= start:
                out.write(raw + b"\n")
                out.flush()
                if cursor_of(raw) is not None:
                    sent += 1
                    if exit_after and sent >= exit_after:
                        sys.exit(0)
            index += 1
"""


def entry(n: int, **fields: object) -> str:
    base: dict[str, object] = {
        "__CURSOR": f"s=test;i={n:x}",
        "__REALTIME_TIMESTAMP": str(1_700_000_000_000_000 + n * 1000),
        "MESSAGE": f"message {n}",
        "PRIORITY": "6",
        "SYSLOG_FACILITY": "3",
        "SYSLOG_IDENTIFIER": "app",
        "_PID": "42",
        "_HOSTNAME": "pi",
    }
    base.update(fields)
    return json.dumps(base)


def write_journal(path: Path, numbers: range, mode: str = "a") -> None:
    with open(path, mode) as handle:
        handle.write("".join(entry(n) + "\n" for n in numbers))


def make_source(
    tmp_path: Path, journal: Path, exit_after: int = 0, die_first: bool = False, **options: object
) -> JournalSource:
    script = tmp_path / "fake_journalctl.py"
    script.write_text(FAKE_JOURNALCTL)
    extra: tuple[str, ...] = (f"--fake-exit-after={exit_after}",) if exit_after else ()
    if die_first:
        extra += (f"--fake-die-first={tmp_path / 'died'}",)
    settings: dict[str, object] = {
        "restart_min_s": 0.05, "restart_max_s": 0.2, "checkpoint_interval_s": 0.05, **options,
    }  # fmt: skip
    opts = JournalOptions(
        command=(sys.executable, str(script), str(journal), *extra, "-f", "-o", "json"),
        **settings,  # type: ignore[arg-type]
    )
    return JournalSource("journal", tmp_path / "journal-state.json", opts)


def take(
    source: JournalSource,
    until: Callable[[list[LogLine]], bool],
    timeout_s: float = 15.0,
    ack: bool = True,
) -> list[LogLine]:
    got: list[LogLine] = []
    deadline = time.monotonic() + timeout_s
    while not until(got) and time.monotonic() < deadline:
        batch = source.get_batch(100, timeout=0.1)
        got.extend(batch)
        if ack and batch:
            source.ack(batch)
    return got


def numbers(lines: list[LogLine]) -> list[int]:
    return [int(line.text.split()[1]) for line in lines]


def test_entries_become_lines_with_their_fields(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    with open(journal, "w") as handle:
        handle.write(entry(0) + "\n")
        handle.write("this is not json\n")
        handle.write('["an array, not an entry"]\n')
        handle.write(entry(1, MESSAGE=list(b"binary \xff\xfe message")) + "\n")
        handle.write(entry(2, MESSAGE=None) + "\n")
        handle.write(entry(3, MESSAGE="x" * 50) + "\n")
    source = make_source(tmp_path, journal, start_at="beginning", max_message_chars=20)
    source.start()
    lines = take(source, lambda got: len(got) >= 4)
    stats = source.stats()
    source.stop()
    assert [line.text for line in lines] == [
        "message 0", "binary \ufffd\ufffd message", "", "x" * 20,
    ]  # fmt: skip
    first = lines[0]
    assert first.origin == "journal" and first.cursor == "s=test;i=0"
    assert first.meta is not None
    assert first.meta.format == "journal" and first.meta.severity == 6
    assert first.meta.facility == 3 and first.meta.app == "app" and first.meta.procid == "42"
    assert first.meta.hostname == "pi" and first.meta.timestamp == pytest.approx(1.7e9)
    assert lines[1].invalid_utf8 and lines[3].truncated
    assert stats.bad_entries == 2 and stats.empty_messages == 1
    assert stats.invalid_utf8_lines == 1 and stats.truncated_lines == 1
    assert stats.status == "running" and stats.lines == 4


def test_start_at_end_skips_the_backlog(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    write_journal(journal, range(10), "w")
    source = make_source(tmp_path, journal, start_at="end")
    source.start()
    ready = tmp_path / "journal.jsonl.ready"
    deadline = time.monotonic() + 10
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    write_journal(journal, range(10, 15))
    lines = take(source, lambda got: len(got) >= 5)
    source.stop()
    assert numbers(lines) == list(range(10, 15))


def test_journalctl_dying_before_its_first_entry_loses_nothing(tmp_path: Path) -> None:
    """start_at = end, and the first journalctl exits at once: entries logged before the
    second one starts are still new, so it continues from when the first one started."""
    journal = tmp_path / "journal.jsonl"
    write_journal(journal, range(10), "w")  # old entries (2023): skipped by start_at = end
    source = make_source(
        tmp_path, journal, die_first=True, start_at="end", restart_min_s=0.5, restart_max_s=1.0
    )
    source.start()
    deadline = time.monotonic() + 10
    while not (tmp_path / "died").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    now_us = int(time.time() * 1_000_000)
    with open(journal, "a") as handle:  # logged while journalctl is down
        handle.write("".join(
            entry(n, __REALTIME_TIMESTAMP=str(now_us + n)) + "\n" for n in range(10, 15)
        ))  # fmt: skip
    lines = take(source, lambda got: len(got) >= 5)
    stats = source.stats()
    source.stop()
    assert numbers(lines) == list(range(10, 15))
    assert stats.restarts == 1


def test_killed_journalctl_is_restarted_after_the_last_cursor(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    write_journal(journal, range(300), "w")
    source = make_source(tmp_path, journal, start_at="beginning")
    source.start()
    lines = take(source, lambda got: len(got) >= 300)
    pid = source.process_id
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    write_journal(journal, range(300, 600))
    lines += take(source, lambda got: len(got) >= 300)
    stats = source.stats()
    source.stop()
    assert numbers(lines) == list(range(600))
    assert stats.restarts == 1
    assert source.process_id is None


def test_journalctl_that_exits_is_restarted_without_duplicates(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    write_journal(journal, range(500), "w")
    source = make_source(tmp_path, journal, exit_after=120, start_at="beginning")
    source.start()
    lines = take(source, lambda got: len(got) >= 500)
    stats = source.stats()
    source.stop()
    assert numbers(lines) == list(range(500))
    assert stats.restarts >= 4


def test_restart_resumes_after_the_last_acknowledged_entry(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    write_journal(journal, range(200), "w")
    first = make_source(tmp_path, journal, start_at="beginning")
    first.start()
    handed = take(first, lambda got: len(got) >= 150, ack=False)
    first.ack(handed[:120])  # processed 120 of the 150 handed out
    first.stop()
    saved = json.loads((tmp_path / "journal-state.json").read_text())
    assert saved["cursor"] == handed[119].cursor

    write_journal(journal, range(200, 250))
    second = make_source(tmp_path, journal, start_at="end")
    second.start()
    rest = take(second, lambda got: len(got) >= 130)
    second.stop()
    assert numbers(rest) == list(range(120, 250))


def test_rejected_cursor_is_dropped_for_start_at(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    write_journal(journal, range(20), "w")
    (tmp_path / "journal-state.json").write_text('{"format": 1, "cursor": "s=gone;i=99"}')
    source = make_source(tmp_path, journal, start_at="beginning")
    source.start()
    lines = take(source, lambda got: len(got) >= 20)
    stats = source.stats()
    source.stop()
    assert numbers(lines) == list(range(20))
    assert stats.restarts == 1


def test_oversized_entry_is_skipped_and_counted(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    with open(journal, "w") as handle:
        handle.write(entry(0) + "\n")
        handle.write(entry(1, MESSAGE="y" * 2_000_000) + "\n")
        handle.write(entry(2) + "\n")
    source = make_source(tmp_path, journal, start_at="beginning", max_entry_bytes=65_536)
    source.start()
    lines = take(source, lambda got: len(got) >= 2)
    stats = source.stats()
    source.stop()
    assert numbers(lines) == [0, 2]
    assert stats.oversized_entries == 1


def test_missing_command_is_reported(tmp_path: Path) -> None:
    options = JournalOptions(command=("edgewatch-no-such-journalctl",), restart_min_s=0.05)
    source = JournalSource("journal", None, options)
    with pytest.raises(Exception, match="not installed"):
        source.open_check()
    source.start()
    deadline = time.monotonic() + 5
    while source.stats().restarts < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    stats = source.stats()
    source.stop()
    assert stats.restarts >= 2 and "cannot run" in stats.detail


@pytest.mark.skipif(shutil.which("journalctl") is None, reason="journalctl is not installed")
@pytest.mark.parametrize(
    ("start_at", "since"), [("end", None), ("beginning", None), ("end", 1_700_000_000.5)]
)
def test_real_journalctl_accepts_the_options(
    tmp_path: Path, start_at: str, since: float | None
) -> None:
    """The options the source appends are the real journalctl's (run without -f on an
    empty journal folder, so it exits at once)."""
    options = JournalOptions(
        command=("journalctl", "-o", "json"),
        extra_args=(f"--directory={tmp_path}",),
        start_at=start_at,  # type: ignore[arg-type]
    )
    source = JournalSource("journal", None, options)
    source.open_check()
    result = subprocess.run(
        source.command_line(None, since), capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
