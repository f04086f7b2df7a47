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


def test_a_saved_position_resumes_after_its_line_while_the_file_is_the_same(log, capsys):
    append(log, *(f"l{i}\n" for i in range(1, 6)))
    first = FollowLines(str(log), poll_s=0.01, idle_exit_s=0.1)
    assert [n for _, n in first] == [1, 2, 3, 4, 5]
    saved = first.position()
    first.close()
    assert (saved["line"], saved["offset"]) == (5, log.stat().st_size)
    append(log, "l6\n", "l7\n")
    again = FollowLines(str(log), poll_s=0.01, idle_exit_s=0.1, resume=saved)
    assert list(again) == [(b"l6\n", 6), (b"l7\n", 7)] and again.resumed["line"] == 5
    again.close()
    assert "resuming after line 5" in capsys.readouterr().err
    # the file rotated (logrotate's create) while nothing followed it: the saved file's lines after the
    # position are read under its new name (found by its inode), then the new file from its first line
    log.rename(log.with_suffix(".log.1"))
    append(log, "n1\n")
    moved = FollowLines(str(log), poll_s=0.01, idle_exit_s=0.1, resume=saved)
    assert list(moved) == [(b"l6\n", 6), (b"l7\n", 7), (b"n1\n", 8)]
    assert moved.resumed["from"] == str(log.with_suffix(".log.1"))
    assert moved.rotations == [{"how": "replaced", "first_line": 8, "read_from": str(log.with_suffix(".log.1")),
                                "lines_there": 2}]
    assert "where the rotation moved it" in capsys.readouterr().err
    # the same file emptied and written again past the position (copytruncate): its first bytes differ
    here = moved.position()
    moved.close()
    log.write_bytes(b"other content, longer than before\n")
    rewritten = FollowLines(str(log), poll_s=0.01, idle_exit_s=0.1, resume=here)
    assert [n for _, n in rewritten] == [1] and "its first bytes changed" in capsys.readouterr().err


def test_from_the_end_reads_only_new_lines_numbered_after_the_old(log):
    append(log, "old1\n", "old2\n", "old3\n")
    follower = FollowLines(str(log), poll_s=0.01, idle_exit_s=0.5, start="end")
    lines = iter(follower)
    append(log, "new\n")
    assert take(lines, 1) == [(b"new\n", 4)]


def test_a_position_behind_a_held_line_resumes_where_that_line_is_read_again(log, monkeypatch):
    """At least once: with stream line 5 still in an open session, the position is a kept mark at or before
    line 5, so a restart after a crash reads line 5 (and what follows) again; marks behind it are dropped."""
    monkeypatch.setattr(FollowLines, "CHECKPOINT_LINES", 3)
    append(log, *(f"line {i}\n" for i in range(1, 11)))
    follower = FollowLines(str(log), poll_s=0.01, idle_exit_s=0.1)
    assert len(list(follower)) == 10
    at = follower.position(oldest_held=5)
    assert at["line"] == 3 and log.read_bytes()[at["offset"]:].startswith(b"line 4\n")
    assert follower.position(oldest_held=9)["line"] == 6 and follower.position()["line"] == 10
    follower.close()
    again = FollowLines(str(log), poll_s=0.01, idle_exit_s=0.1, resume=at)
    assert [n for _, n in again][:2] == [4, 5]
    again.close()


def test_a_last_line_still_being_written_is_read_again_whole_after_a_restart(log):
    append(log, "done\n", "half of a li")
    first = FollowLines(str(log), poll_s=0.01, idle_exit_s=0.1)
    assert list(first) == [(b"done\n", 1), (b"half of a li", 2)]  # scored as it was when the stream ended
    saved = first.position()
    first.close()
    assert (saved["line"], saved["offset"]) == (1, len(b"done\n"))
    append(log, "ne\n")
    again = FollowLines(str(log), poll_s=0.01, idle_exit_s=0.1, resume=saved)
    assert list(again) == [(b"half of a line\n", 2)]
    again.close()


def test_several_files_side_by_side_each_with_its_own_lines_and_rotation(tmp_path, monkeypatch):
    from loglm.detect.streaming import FollowFiles

    monkeypatch.setattr(FollowFiles, "TURN_LINES", 2)
    a, b = tmp_path / "auth.log", tmp_path / "syslog"
    append(a, *(f"a{i}\n" for i in range(1, 6)))
    append(b, "b1\n")
    follower = FollowFiles([str(a), str(b)], poll_s=0.01, idle_exit_s=0.5)
    lines = iter(follower)
    # at most two lines of a file a turn: the quiet file's line does not wait behind the busy one's five
    assert take(lines, 6) == [(b"a1\n", 1, str(a)), (b"a2\n", 2, str(a)), (b"b1\n", 1, str(b)),
                              (b"a3\n", 3, str(a)), (b"a4\n", 4, str(a)), (b"a5\n", 5, str(a))]
    b.rename(tmp_path / "syslog.1")  # one of them rotates
    append(b, "b2 new file\n")
    append(a, "a6\n")
    assert sorted(take(lines, 2)) == [(b"a6\n", 6, str(a)), (b"b2 new file\n", 2, str(b))]
    assert follower.rotations == {str(b): [{"how": "replaced", "first_line": 2}]} and list(lines) == []
    saved = {p["input"]: p for p in follower.positions({})}
    follower.close()
    assert (saved[str(a)]["line"], saved[str(b)]["line"]) == (6, 2)
    append(a, "a7\n")
    again = FollowFiles([str(a), str(b)], poll_s=0.01, idle_exit_s=0.2, resume=saved)
    assert list(again) == [(b"a7\n", 7, str(a))] and set(again.resumed) == {str(a), str(b)}
    again.close()
    with pytest.raises(ValueError, match="follow it alone"):
        FollowFiles([str(a), "-"])


def test_a_copy_truncated_while_stopped_is_resumed_in_logrotates_copy(log, capsys):
    """copytruncate while no stream followed the file: the lines after the saved position are in the copy
    (found by the file's first bytes), read there before the emptied file's new lines. A compressed copy is
    not read: the file is then read from its first line, saying why."""
    append(log, *(f"l{i}\n" for i in range(1, 6)))
    first = FollowLines(str(log), poll_s=0.01, idle_exit_s=0.1)
    assert len(list(first)) == 5
    saved = first.position()
    first.close()
    append(log, "l6\n", "l7\n")
    older = log.with_name("app.log-20261201")  # an older rotation beside it: other first bytes
    older.write_bytes(b"x1\nx2\nx3\nx4\nx5\nx6\nx7\nx8\n")
    copy = log.with_name("app.log-20261204")
    copy.write_bytes(log.read_bytes())
    os.truncate(log, 0)
    append(log, "n1\n")
    again = FollowLines(str(log), poll_s=0.01, idle_exit_s=0.1, resume=saved)
    assert list(again) == [(b"l6\n", 6), (b"l7\n", 7), (b"n1\n", 8)]
    assert again.rotations == [{"how": "truncated", "first_line": 8, "read_from": str(copy), "lines_there": 2}]
    again.close()
    copy.rename(copy.with_suffix(".gz"))  # (not really compressed: a .gz copy is not looked into at all)
    lost = FollowLines(str(log), poll_s=0.01, idle_exit_s=0.1, resume=saved)
    assert list(lost) == [(b"n1\n", 1)] and lost.resumed is None
    assert "no rotated file beside it holds it" in capsys.readouterr().err


def test_lines_a_stream_had_not_read_when_its_file_was_copied_and_truncated_are_read_in_the_copy(log):
    """A stream behind its file (a burst) when logrotate copytruncates it: the lines it had not read yet are
    in the copy, and are read there before the emptied file's new lines. Before, they were lost."""
    follower = FollowLines(str(log), poll_s=0.01, idle_exit_s=0.5)
    lines = iter(follower)
    writer = open(log, "ab", buffering=0)
    try:
        # more than a read buffer holds: the lines past it are only in the file
        writer.write(b"first line of the day\n" + b"".join(b"line %d\n" % i for i in range(2, 5001)))
        assert take(lines, 2) == [(b"first line of the day\n", 1), (b"line 2\n", 2)]  # 4,998 more unread
        copy = log.with_name("app.log.1")
        copy.write_bytes(log.read_bytes())  # copytruncate: the copy made, the file emptied under the writer
        os.truncate(log, 0)
        writer.write(b"c1\n")
        rest = list(lines)
    finally:
        writer.close()
    assert rest == [(b"line %d\n" % i, i) for i in range(3, 5001)] + [(b"c1\n", 5001)]
    (rotation,) = follower.rotations  # the lines past what the reader had buffered were read in the copy
    assert rotation["how"] == "truncated" and rotation["first_line"] == 5001 and rotation["read_from"] == str(copy)
    assert 4000 < rotation["lines_there"] <= 4998


def test_a_file_truncated_and_written_past_the_position_between_two_polls_is_read_from_its_start(log):
    """copytruncate, then a busy writer fills the emptied file past where the stream had read before its next
    poll: the size never looked smaller, so the truncation is told by the file's first bytes. Before, the
    stream read on from its old offset: the new file's first lines lost, the next read from the middle of one."""
    follower = FollowLines(str(log), poll_s=0.01)
    writer = open(log, "ab", buffering=0)
    try:
        writer.write(b"first line of the day\nsecond\n")
        assert list(follower.available()) == [(b"first line of the day\n", 1), (b"second\n", 2)]
        os.truncate(log, 0)
        new = [b"new %d\n" % i for i in range(20)]
        writer.write(b"".join(new))  # 140 bytes: past the 29 read before
        got = list(follower.available())
    finally:
        writer.close()
    assert got == [(line, i) for i, line in enumerate(new, 3)]
    assert follower.rotations == [{"how": "truncated", "first_line": 3}]
    # and growth alone is not a truncation
    with open(log, "ab") as fh:
        fh.write(b"more\n")
    assert list(follower.available()) == [(b"more\n", 23)] and len(follower.rotations) == 1


def test_a_truncation_is_told_even_when_every_file_starts_with_the_same_banner(log):
    """Files that all start alike (a banner longer than the first bytes compared) give the head check nothing:
    the bytes just before the position read to, remembered when the stream was last caught up, tell."""
    banner = b"# service log v2, " + b"=" * 1100 + b"\n"
    follower = FollowLines(str(log), poll_s=0.01)
    writer = open(log, "ab", buffering=0)
    try:
        writer.write(banner + b"yesterday 1\nyesterday 2\n")
        assert [n for _, n in follower.available()] == [1, 2, 3]
        os.truncate(log, 0)
        new = [banner] + [b"today %d\n" % i for i in range(30)]
        writer.write(b"".join(new))  # past the position read to, the same first 1,024 bytes
        got = list(follower.available())
        assert got == [(line, i) for i, line in enumerate(new, 4)]
        assert follower.rotations == [{"how": "truncated", "first_line": 4}]
        writer.write(b"more\n")  # growth alone is not a truncation
        assert list(follower.available()) == [(b"more\n", 35)] and len(follower.rotations) == 1
    finally:
        writer.close()
