"""The file follower: real files, real writer processes, real rotations and restarts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path

import pytest

from device.logs.record import LogLine
from device.logs.tail import FileFollower, TailOptions, TailSource

REPO = Path(__file__).resolve().parents[1]

FAST = TailOptions(poll_interval_s=0.01, rotate_wait_s=1.0, checkpoint_interval_s=0.05)

# A program that logs at full speed: one write() a line, O_APPEND like a logging library.
# ``rename`` mode rotates like logrotate's default, every ``rotate_ms`` (up to ``rotations``
# times): rename the file, and the program goes on writing to the old file for ``lag``
# lines until it "gets the signal" and reopens its log. ``plain`` mode just appends.
# It stops after ``total`` lines (or at SIGTERM when total < 0) and prints how many it wrote.
WRITER = r"""
import os, signal, sys, time
path, mode = sys.argv[1], sys.argv[2]
rotate_ms, lag, total, max_rotations = map(int, sys.argv[3:7])
stop = False
def on_term(signum, frame):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
fd = os.open(path, flags, 0o644)
reopen_at = -1
rotations = 0
n = 0
last_rotation = time.monotonic()
while not stop and (total < 0 or n < total):
    os.write(fd, b"line %09d\n" % n)
    n += 1
    if n == reopen_at:
        os.close(fd)
        fd = os.open(path, flags, 0o644)
    if (mode == "rename" and n % 100 == 0 and rotations < max_rotations
            and time.monotonic() - last_rotation >= rotate_ms / 1000 and n > reopen_at):
        rotations += 1
        os.rename(path, f"{path}.{rotations}")
        reopen_at = n + lag
        last_rotation = time.monotonic()
os.close(fd)
print(n, flush=True)
"""


def start_writer(
    path: Path, mode: str, rotate_ms: int = 0, lag: int = 0, total: int = -1, rotations: int = 0
) -> subprocess.Popen[str]:
    args = [str(path), mode, str(rotate_ms), str(lag), str(total), str(rotations)]
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, *args], stdout=subprocess.PIPE, text=True
    )


def expected_lines(count: int) -> set[str]:
    return {f"line {n:09d}" for n in range(count)}


def collect(
    source: TailSource,
    until: Callable[[Counter[str]], bool],
    timeout_s: float,
    partial: Counter[str] | None = None,
):
    """Take and acknowledge lines until ``until(seen)`` or the deadline (generous: on a
    loaded 2-core CI machine the full-speed writers leave the follower far behind).
    ``partial``, when given, counts the lines handed out flagged partial."""
    seen: Counter[str] = Counter()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not until(seen):
        batch = source.get_batch(2000, timeout=0.1)
        for line in batch:
            seen[line.text] += 1
            if partial is not None and line.partial:
                partial[line.text] += 1
        if batch:
            source.ack(batch)
    return seen


def poll_until(
    follower: FileFollower, count: int, timeout_s: float = 10.0, ack: bool = True
) -> list[LogLine]:
    lines: list[LogLine] = []
    deadline = time.monotonic() + timeout_s
    while len(lines) < count and time.monotonic() < deadline:
        got = follower.poll()
        if ack:
            follower.ack(got)
        lines.extend(got)
        if not got:
            time.sleep(0.005)
    return lines


def texts(lines: list[LogLine]) -> list[str]:
    return [line.text for line in lines]


# -- basics -------------------------------------------------------------------------------


def test_follows_appends_with_exact_offsets(tmp_path: Path) -> None:
    log_file = tmp_path / "app.log"
    log_file.write_bytes(b"one\ntwo\r\n")
    follower = FileFollower("app", [log_file], None, TailOptions(start_at="beginning"))
    first = poll_until(follower, 2)
    assert texts(first) == ["one", "two"]
    assert [(line.offset, line.next_offset) for line in first] == [(0, 4), (4, 9)]
    assert first[0].origin == str(log_file) and first[0].source == "app"
    with open(log_file, "ab") as handle:
        handle.write(b"three\n")
    third = poll_until(follower, 1)
    assert texts(third) == ["three"] and third[0].offset == 9
    assert follower.stats().lines == 3 and follower.stats().bytes == 15
    follower.close()


def test_start_at_end_reads_the_line_being_written_whole(tmp_path: Path) -> None:
    log_file = tmp_path / "app.log"
    log_file.write_bytes(b"old 1\nold 2\nhalf of a li")
    follower = FileFollower("app", [log_file], None, TailOptions(start_at="end"))
    assert follower.poll() == []
    with open(log_file, "ab") as handle:
        handle.write(b"ne\nnew\n")
    assert texts(poll_until(follower, 2)) == ["half of a line", "new"]
    follower.close()


def test_partial_line_is_held_then_handed_out_after_the_timeout(tmp_path: Path) -> None:
    log_file = tmp_path / "app.log"
    log_file.write_bytes(b"complete\nno newline yet")
    held = FileFollower("held", [log_file], None, TailOptions(start_at="beginning"))
    assert texts(poll_until(held, 1)) == ["complete"]
    time.sleep(0.05)
    assert held.poll() == []  # held until its newline
    with open(log_file, "ab") as handle:
        handle.write(b", now\n")
    assert texts(poll_until(held, 1)) == ["no newline yet, now"]
    held.close()

    options = TailOptions(start_at="beginning", partial_line_timeout_s=0.05)
    log_file.write_bytes(b"complete\nno newline yet")
    timed = FileFollower("timed", [log_file], None, options)
    lines = poll_until(timed, 2, timeout_s=5)
    assert texts(lines) == ["complete", "no newline yet"]
    assert lines[1].partial and not lines[0].partial
    assert timed.stats().partial_lines == 1
    with open(log_file, "ab") as handle:
        handle.write(b" (rest)\n")
    assert texts(poll_until(timed, 1)) == [" (rest)"]
    timed.close()


def test_glob_picks_up_a_new_file_from_its_first_line(tmp_path: Path) -> None:
    (tmp_path / "a.log").write_text("a existing\n")
    (tmp_path / "ignored.txt").write_text("not a match\n")
    follower = FileFollower("dir", [tmp_path / "*.log"], None, TailOptions(start_at="end"))
    assert follower.poll() == []
    (tmp_path / "b.log").write_text("b first\nb second\n")
    with open(tmp_path / "a.log", "a") as handle:
        handle.write("a appended\n")
    lines = poll_until(follower, 3)
    assert sorted(texts(lines)) == ["a appended", "b first", "b second"]
    assert {line.origin for line in lines} == {str(tmp_path / "a.log"), str(tmp_path / "b.log")}
    follower.close()


# -- rotation at full speed -------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["app.log", "app.log*"])
def test_rename_rotation_at_full_speed_sees_every_line_exactly_once(
    tmp_path: Path, pattern: str
) -> None:
    """The writer renames its file every 80 ms and writes 500 more lines to the old file
    before it reopens (a program reacting to logrotate's signal). With the plain name the
    follower must finish each old file through its descriptor; with the glob it also
    matches the rotated names and must not read them again."""
    log_file = tmp_path / "app.log"
    log_file.touch()
    source = TailSource("app", [tmp_path / pattern], tmp_path / "state.json", FAST)
    source.start()
    writer = start_writer(log_file, "rename", rotate_ms=80, lag=500, total=-1, rotations=6)
    while len(list(tmp_path.glob("app.log.*"))) < 6:
        time.sleep(0.02)
    time.sleep(0.1)
    writer.send_signal(signal.SIGTERM)
    written = int(writer.communicate(timeout=60)[0])
    seen = collect(source, lambda s: len(s) >= written, timeout_s=180)
    stats = source.stats()
    source.stop()
    duplicates = {text: n for text, n in seen.items() if n > 1}
    assert not duplicates, f"{len(duplicates)} lines seen twice"
    assert set(seen) == expected_lines(written), f"missing {written - len(seen)} lines"
    assert stats.rotations == 6 if pattern == "app.log" else stats.rotations == 0
    assert stats.lines == written


def test_copytruncate_at_full_speed_sees_every_surviving_line_exactly_once(
    tmp_path: Path,
) -> None:
    """logrotate's copytruncate (copy to app.log.N, then truncate) every 60 ms while the
    writer appends at full speed. Lines written between the copy and the truncation exist
    nowhere any more (the inherent copytruncate window); every line that is still on disk
    must be seen, and no line twice. A copy can also end in the middle of a line (the
    copy read the file while a write was half in the page cache): that fragment is all
    that is left of the line, and it is handed out flagged partial."""
    log_file = tmp_path / "app.log"
    log_file.touch()
    options = TailOptions(poll_interval_s=0.01, rotate_wait_s=0.5, checkpoint_interval_s=0.05)
    source = TailSource("app", [log_file], tmp_path / "state.json", options)
    source.start()
    writer = start_writer(log_file, "plain")
    copies: list[Path] = []
    while len(copies) < 6:
        time.sleep(0.06)
        copy = tmp_path / f"app.log.{len(copies) + 1}"
        shutil.copyfile(log_file, copy)
        os.truncate(log_file, 0)
        copies.append(copy)
    time.sleep(0.05)
    writer.send_signal(signal.SIGTERM)
    written = int(writer.communicate(timeout=30)[0])
    on_disk: list[str] = []
    fragments: set[str] = set()
    for path in [*copies, log_file]:
        *complete, last = path.read_text().split("\n")
        on_disk.extend(complete)
        if last:
            fragments.add(last)
    assert len(on_disk) == len(set(on_disk)), "a line is on disk twice"
    survivors = set(on_disk)
    flagged: Counter[str] = Counter()
    seen = collect(
        source, lambda s: len(s) >= len(survivors) and survivors <= s.keys(), timeout_s=180,
        partial=flagged,
    )  # fmt: skip
    stats = source.stats()
    source.stop()
    duplicates = {text: n for text, n in seen.items() if n > 1 and text not in fragments}
    assert not duplicates, f"{len(duplicates)} lines seen twice, e.g. {next(iter(duplicates))}"
    missing = survivors - set(seen)
    assert not missing, f"{len(missing)} lines on disk were never seen"
    torn = set(seen) - expected_lines(written)
    assert torn <= fragments, f"lines read torn or from the middle: {sorted(torn)[:3]}"
    # Every torn line was flagged partial, and only a copy's unterminated end is: it
    # may also be a whole line's text whose newline the copy missed (not torn, still
    # partial: CI once caught one).
    assert torn <= flagged.keys(), f"torn lines not flagged: {sorted(torn - flagged.keys())[:3]}"
    mid_file = flagged.keys() - fragments
    assert not mid_file, f"lines flagged partial in the middle of a file: {sorted(mid_file)[:3]}"
    assert stats.partial_lines == sum(flagged.values())
    # Truncating a file that is already empty (the writer stalled for the whole 60 ms
    # on a busy machine: CI caught one) changes nothing anyone can see, and loses nothing.
    visible = sum(1 for copy in copies if copy.stat().st_size > 0)
    assert visible >= 3, "the writer wrote too little to test anything"
    assert stats.truncations >= visible
    lost = written - len(set(seen) - torn)
    print(
        f"copytruncate: {written} written, {lost} lost in the copy/truncate windows, "
        f"{len(torn)} copies ended mid-line"
    )


# -- restarts -------------------------------------------------------------------------


def test_clean_restart_mid_file_resumes_exactly(tmp_path: Path) -> None:
    log_file = tmp_path / "app.log"
    log_file.write_text("".join(f"line {n:09d}\n" for n in range(10_000)))
    state = tmp_path / "state.json"
    options = TailOptions(start_at="beginning", max_batch_lines=700)
    first = FileFollower("app", [log_file], state, options)
    taken = first.poll()
    assert len(taken) == 700
    processed = taken[:450]  # the consumer processed 450 of the 700 it was handed
    first.ack(processed)
    first.close()
    saved = json.loads(state.read_text())["files"][0]
    assert saved["offset"] == processed[-1].next_offset

    with open(log_file, "a") as handle:
        handle.write("".join(f"line {n:09d}\n" for n in range(10_000, 12_000)))
    second = FileFollower("app", [log_file], state, options)
    rest = poll_until(second, 12_000 - 450)
    second.close()
    all_texts = texts(processed) + texts(rest)
    assert all_texts == [f"line {n:09d}" for n in range(12_000)]


CONSUMER = r"""
import sys, time
from pathlib import Path
from device.logs.tail import TailOptions, TailSource
log_file, state = sys.argv[1], Path(sys.argv[2])
source = TailSource("app", [log_file], state, TailOptions(start_at="beginning",
                    poll_interval_s=0.01, checkpoint_interval_s=0.02, max_batch_lines=100))
source.start()
while True:
    line = source.get(timeout=1)
    if line is None:
        continue
    print(line.text, flush=True)
    source.ack(line)
    time.sleep(0.0002)
"""


def test_killed_consumer_resumes_without_loss(tmp_path: Path) -> None:
    """SIGKILL in the middle of a file: at least once, duplicates bounded by what was
    acknowledged after the last checkpoint."""
    log_file = tmp_path / "app.log"
    total = 20_000
    log_file.write_text("".join(f"line {n:09d}\n" for n in range(total)))
    state = tmp_path / "state.json"
    consumer = subprocess.Popen(
        [sys.executable, "-c", CONSUMER, str(log_file), str(state)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert consumer.stdout is not None
    before: list[str] = []
    for raw in consumer.stdout:
        before.append(raw.rstrip("\n"))
        if len(before) == 3_000:
            break
    consumer.send_signal(signal.SIGKILL)
    consumer.wait(timeout=10)
    before.extend(line.rstrip("\n") for line in consumer.stdout)
    assert state.exists() and 0 < len(before) < total

    follower = FileFollower("app", [log_file], state, TailOptions(start_at="beginning"))
    after: list[str] = []
    deadline = time.monotonic() + 10
    while (not after or after[-1] != f"line {total - 1:09d}") and time.monotonic() < deadline:
        after.extend(texts(follower.poll()))
    follower.close()
    assert set(before) | set(after) == expected_lines(total)
    replayed = set(before) & set(after)
    assert len(after) == len(set(after))
    # The replayed lines are the tail of what the killed consumer printed, contiguous.
    assert after[: len(replayed)] == before[len(before) - len(replayed) :]
    assert len(replayed) < 2_000


def test_rotation_while_stopped_is_finished_from_the_saved_offset(tmp_path: Path) -> None:
    log_file = tmp_path / "app.log"
    log_file.write_text("".join(f"line {n:09d}\n" for n in range(100)))
    state = tmp_path / "state.json"
    options = TailOptions(start_at="beginning", rotate_wait_s=0.0)
    first = FileFollower("app", [log_file], state, options)
    first.ack(first.poll(max_lines=40))
    first.close()
    with open(log_file, "a") as handle:
        handle.write("".join(f"line {n:09d}\n" for n in range(100, 150)))
    log_file.rename(tmp_path / "app.log.1")
    log_file.write_text("".join(f"line {n:09d}\n" for n in range(150, 200)))
    second = FileFollower("app", [log_file], state, options)
    rest = poll_until(second, 160)
    stats = second.stats()
    second.close()
    assert sorted(texts(rest)) == [f"line {n:09d}" for n in range(40, 200)]
    assert stats.rotations == 1


def test_reused_inode_is_read_from_the_start(tmp_path: Path) -> None:
    """The saved position names this file's inode, but the first bytes differ: another
    file got the inode number, so the saved offset means nothing for it."""
    log_file = tmp_path / "app.log"
    log_file.write_text("a different file now\nsecond\n")
    info = log_file.stat()
    state = tmp_path / "state.json"
    state.write_text(
        json.dumps(
            {
                "format": 1,
                "files": [
                    {
                        "path": str(log_file), "dev": info.st_dev, "inode": info.st_ino,
                        "offset": 21, "fingerprint": b"the old file\n".hex(),
                    }
                ],
            }
        )
    )  # fmt: skip
    follower = FileFollower("app", [log_file], state, TailOptions(start_at="end"))
    assert texts(poll_until(follower, 2)) == ["a different file now", "second"]
    follower.close()


def test_corrupt_state_is_kept_aside_and_start_at_applies(tmp_path: Path) -> None:
    log_file = tmp_path / "app.log"
    log_file.write_text("before\n")
    state = tmp_path / "state.json"
    state.write_text('{"format": 1, "files": [{"path": 3')
    follower = FileFollower("app", [log_file], state, TailOptions(start_at="end"))
    assert follower.poll() == []
    with open(log_file, "a") as handle:
        handle.write("after\n")
    assert texts(poll_until(follower, 1)) == ["after"]
    follower.close()
    assert list(tmp_path.glob("state.json.corrupt-*"))
    assert json.loads(state.read_text())["files"][0]["offset"] == len("before\nafter\n")


# -- bad input ------------------------------------------------------------------------


def test_binary_garbage_is_decoded_and_counted_never_fatal(tmp_path: Path) -> None:
    log_file = tmp_path / "app.log"
    garbage = os.urandom(200_000) + b"\xff\xfe broken \xc3\n"
    log_file.write_bytes(b"good before\n" + garbage + "caf\u00e9 after\n".encode())
    follower = FileFollower("app", [log_file], None, TailOptions(start_at="beginning"))
    lines = poll_until(follower, garbage.count(b"\n") + 2)
    stats = follower.stats()
    follower.close()
    assert lines[0].text == "good before" and lines[-1].text == "caf\u00e9 after"
    assert stats.invalid_utf8_lines > 0
    assert stats.invalid_utf8_lines == sum(line.invalid_utf8 for line in lines)
    assert lines[-2].text.endswith(" broken \ufffd") and lines[-2].invalid_utf8
    assert sum(line.next_offset - line.offset for line in lines) == log_file.stat().st_size


def test_ten_megabyte_line_is_cut_with_bounded_memory(tmp_path: Path) -> None:
    log_file = tmp_path / "app.log"
    with open(log_file, "wb") as handle:
        handle.write(b"before\n")
        for _ in range(10):
            handle.write(b"x" * 1_000_000)
        handle.write(b"\nafter\n")
    options = TailOptions(start_at="beginning", max_line_bytes=4096)
    follower = FileFollower("app", [log_file], None, options)
    tracemalloc.start()
    try:
        lines = poll_until(follower, 3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    stats = follower.stats()
    follower.close()
    assert texts(lines)[0] == "before" and texts(lines)[2] == "after"
    big = lines[1]
    assert big.truncated and big.text == "x" * 4096
    assert big.next_offset - big.offset == 10_000_001
    assert stats.truncated_lines == 1 and stats.skipped_bytes == 10_000_000 - 4096
    assert peak < 2_000_000, f"peak {peak} bytes while reading a 10 MB line"


def test_file_deleted_while_followed_is_finished_then_dropped(tmp_path: Path) -> None:
    log_file = tmp_path / "app.log"
    log_file.touch()
    options = TailOptions(poll_interval_s=0.01, rotate_wait_s=0.2)
    follower = FileFollower("app", [log_file], tmp_path / "state.json", options)
    follower.poll()
    with open(log_file, "a") as handle:
        handle.write("one\n")
        handle.flush()
        log_file.unlink()
        handle.write("two, written after the unlink\n")
        handle.flush()
        lines = poll_until(follower, 2)
        handle.write("three\n")
    lines += poll_until(follower, 1)
    deadline = time.monotonic() + 5
    while follower.stats().files_open and time.monotonic() < deadline:
        follower.poll()
        time.sleep(0.01)
    stats = follower.stats()
    follower.close()
    assert texts(lines) == ["one", "two, written after the unlink", "three"]
    assert stats.deletions == 1 and stats.files_open == 0
    assert json.loads((tmp_path / "state.json").read_text())["files"] == []


def test_source_thread_hands_out_and_resumes(tmp_path: Path) -> None:
    log_file = tmp_path / "app.log"
    log_file.write_text("".join(f"line {n:09d}\n" for n in range(500)))
    state = tmp_path / "state.json"
    options = TailOptions(start_at="beginning", poll_interval_s=0.01, queue_lines=50)
    source = TailSource("app", [log_file], state, options)
    source.start()
    got = [source.get(timeout=5) for _ in range(200)]
    assert all(line is not None for line in got)
    source.ack([line for line in got if line is not None])
    assert source.stats().queue_depth <= 50 + options.max_batch_lines
    source.stop()
    assert source.stats().status == "stopped"

    again = TailSource("app", [log_file], state, options)
    again.start()
    seen = collect(again, lambda s: len(s) >= 300, timeout_s=10)
    again.stop()
    assert sorted(seen) == [f"line {n:09d}" for n in range(200, 500)]


def test_unreadable_file_is_counted_and_retried(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads files regardless of their mode")
    log_file = tmp_path / "app.log"
    log_file.write_text("secret\n")
    log_file.chmod(0)
    follower = FileFollower("app", [log_file], None, TailOptions(start_at="beginning"))
    assert follower.poll() == []
    assert follower.stats().open_errors == 1
    log_file.chmod(0o644)
    time.sleep(0.3)
    assert texts(poll_until(follower, 1)) == ["secret"]
    follower.close()


def test_poll_from_a_thread_while_another_acks(tmp_path: Path) -> None:
    """ack() and stats() are called from the consumer's thread while poll() runs."""
    log_file = tmp_path / "app.log"
    log_file.write_text("".join(f"line {n:09d}\n" for n in range(50_000)))
    follower = FileFollower("app", [log_file], tmp_path / "s.json", TailOptions("beginning"))
    handed: deque[LogLine] = deque()
    done = threading.Event()

    def consume() -> None:
        while not done.is_set() or handed:
            if handed:
                follower.ack(handed.popleft())
                follower.stats()

    thread = threading.Thread(target=consume)
    thread.start()
    total = 0
    while total < 50_000:
        batch = follower.poll()
        total += len(batch)
        handed.extend(batch)
        follower.checkpoint()
    done.set()
    thread.join(30)
    follower.close()
    assert follower.positions() == {str(log_file): log_file.stat().st_size}
