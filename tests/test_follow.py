"""Following a growing file through log rotation (``follow=true``): replaced, truncated, gone for a while.
Each test drives the follower line by line, so what it has read when the file rotates is known exactly."""

from __future__ import annotations

import os
import threading

import pytest

from loglm.detect.streaming import FollowLines


def take(lines, k: int) -> list[tuple[bytes, int]]:
    return [next(lines) for _ in range(k)]


def append(path, *texts: str) -> None:
    with open(path, "ab") as fh:
        fh.write("".join(texts).encode())


@pytest.fixture
def log(tmp_path):
    path = tmp_path / "app.log"
    path.write_bytes(b"")
    return path


def test_a_replaced_file_is_read_to_its_end_then_the_new_one_from_its_start(log, capsys):
    follower = FollowLines(str(log), poll_s=0.01, idle_exit_s=0.5)
    lines = iter(follower)
    append(log, "a1\n", "a2\n")
    assert take(lines, 2) == [(b"a1\n", 1), (b"a2\n", 2)]
    # written after the follower found the end, then the file rotated (logrotate's create): the old file's
    # last lines (one without a newline) come before the new file's
    append(log, "a3\n", "a4 unfinished")
    os.rename(log, log.with_suffix(".log.1"))
    append(log, "b1\n", "b2\n")
    assert take(lines, 4) == [(b"a3\n", 3), (b"a4 unfinished", 4), (b"b1\n", 5), (b"b2\n", 6)]
    assert follower.rotations == [{"how": "replaced", "first_line": 5}]
    assert "was replaced (log rotation)" in capsys.readouterr().err and list(lines) == []


def test_a_file_truncated_in_place_is_read_again_from_its_start(log):
    follower = FollowLines(str(log), poll_s=0.01, idle_exit_s=0.5)
    lines = iter(follower)
    writer = open(log, "ab", buffering=0)  # the application's handle, O_APPEND as loggers open theirs
    try:
        writer.write(b"first line of the day\nsecond\n")
        assert take(lines, 2) == [(b"first line of the day\n", 1), (b"second\n", 2)]
        os.truncate(log, 0)  # logrotate copytruncate: the copy made, the file emptied under the writer
        writer.write(b"c1\n")
        assert take(lines, 1) == [(b"c1\n", 3)]
        writer.write(b"c2\n")
        assert take(lines, 1) == [(b"c2\n", 4)] and list(lines) == []
    finally:
        writer.close()
    assert follower.rotations == [{"how": "truncated", "first_line": 3}]


def test_a_file_gone_for_a_while_is_followed_again_when_it_comes_back(log):
    follower = FollowLines(str(log), poll_s=0.01, idle_exit_s=2.0)
    lines = iter(follower)
    append(log, "x1\n")
    assert take(lines, 1) == [(b"x1\n", 1)]
    log.unlink()  # deleted; the follower polls a missing name until a new file appears
    timer = threading.Timer(0.3, append, (log, "y1\n"))
    timer.start()
    try:
        assert take(lines, 1) == [(b"y1\n", 2)]
    finally:
        timer.join()
    assert follower.rotations == [{"how": "replaced", "first_line": 2}]


def test_a_quiet_file_that_does_not_rotate_records_no_rotation(log):
    append(log, "only\n")
    follower = FollowLines(str(log), poll_s=0.01, idle_exit_s=0.1)
    assert list(follower) == [(b"only\n", 1)] and follower.rotations == []
