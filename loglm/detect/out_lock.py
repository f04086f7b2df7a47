"""One detection writes an alerts path at a time.

A detection writes ``out`` and its siblings (findings, CEF, rejections, scores, report) and, when it follows
files, its resume positions (``<out>.follow.json``).  Two detections given the same ``out`` (a unit started
twice, a batch run beside a stream) would interleave or truncate each other's alerts and save each other's
positions.  The first holds an advisory lock on ``<out>.lock`` (``flock``, released by the kernel when the
process ends, however it ends; the file is removed when the detection ends cleanly); a second is refused
before it opens anything, naming the holder's pid."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


def lock_path(out: Path) -> Path:
    return out.with_name(out.name + ".lock")


@contextlib.contextmanager
def writing(out: Path):
    """Hold ``out``'s lock for the block; raise ValueError at once when another process holds it.  The lock
    file is removed at the end, while still locked: a process that opened it meanwhile finds, once it holds
    the lock, that the name no longer points at its file, and starts again with a new one."""
    lock = lock_path(out)
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fh = open(lock, "a+")  # never truncated before the lock is held: the holder's pid stays readable
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise ValueError(f"{out}: another detection is writing these alerts (pid {holder}, lock {lock}); "
                             "give this one its own out=, or stop that one first") from None
        try:
            same = os.stat(lock).st_ino == os.fstat(fh.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        fh.close()  # the holder before removed it as this process opened it: take the new one
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        fh.close()  # releases the lock
