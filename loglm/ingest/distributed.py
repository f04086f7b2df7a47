"""Read tasks for ``backend=ray``: the inputs cut into byte ranges of ``ray.lines_per_task`` lines (a
compressed, Parquet or CR-terminated file is one task), each read on its own by
:func:`loglm.ingest.partitioned.read_task` on any node; a range that starts inside a structured file first
reads the file's header lines (Zeek ``#fields``, a CSV header) so it is parsed as the top of the file is.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from loglm.ingest.readers import (
    UNREADABLE,
    LongLine,
    bounded_lines,
    cr_terminated,
    open_binary,
)

META, RECORD, REJECT = 0, 1, 2
PLAN_BLOCK_BYTES = 1 << 23  # iter_tasks reads a file this many bytes at a time


def whole_file(path: Path) -> dict:
    """The read task of a whole file."""
    kind = "parquet" if path.suffix == ".parquet" else "lines"
    return {"kind": kind, "path": os.fspath(path), "start": 0, "end": -1, "first_line": 1, "prime": 0}


def iter_tasks(paths: list[Path], data, lines_per_task: int):
    """Byte ranges of ``lines_per_task`` lines per plain file (a compressed or Parquet file is one task), each
    yielded as soon as its end is found: prepare starts reading the first ranges while the rest of the file
    is still being cut.  Where continuation lines join the record before them (``data.multiline``), a range
    ends where a record starts, never inside a stack trace."""
    from loglm.ingest.readers import make_reader, record_starts, source_config

    for path in paths:
        fmt = source_config(data, path).format
        if path.suffix in (".parquet", ".gz") or cr_terminated(path):  # CR-terminated: one task
            yield whole_file(path)
            continue
        if fmt == "jsonl":
            from loglm.ingest.json_lines import records_document

            if records_document(path):  # one JSON document (CloudTrail): read whole, one task
                yield whole_file(path)
                continue
        starts = record_starts(make_reader(data, path))
        if starts is not None:
            yield from _at_record_starts(_line_ranges(path, fmt, lines_per_task), path, starts, data.max_line_bytes)
        else:
            yield from _line_ranges(path, fmt, lines_per_task)


def _at_record_starts(tasks, path: Path, starts, max_line_bytes: int):
    """``tasks`` (the consecutive ranges of one file) with each end moved forward past continuation lines to
    the next line that starts a record (or the file's end); a range a long record swallowed is dropped."""
    tasks = iter(tasks)
    cur = next(tasks, None)
    start, first_line = 0, 1
    with open(path, "rb") as fh:
        while cur is not None:
            nxt = next(tasks, None)
            if cur["end"] <= start:  # the record before ran past this whole range
                cur = nxt
                continue
            end, line_no = cur["end"], (nxt["first_line"] if nxt is not None else None)
            if nxt is not None:  # the line at cur's end is nxt's first
                fh.seek(end)
                for raw in bounded_lines(fh, max_line_bytes):
                    if starts(raw):
                        break
                    end, line_no = end + (raw.total if isinstance(raw, LongLine) else len(raw)), line_no + 1
            yield {**cur, "start": start, "end": end, "first_line": first_line}
            start, first_line, cur = end, line_no, nxt


def _line_ranges(path: Path, fmt: str, lines_per_task: int):
    """Byte ranges of ``lines_per_task`` lines of one plain file."""
    prime = _leading_metadata(path, fmt)
    start, line_no, count, pos = 0, 1, 0, 0
    with open(path, "rb") as fh:
        while True:
            block = fh.read(PLAN_BLOCK_BYTES)
            if not block:
                break
            n = block.count(b"\n")  # lines are counted in C; a block holding a range's end is indexed
            if count + n >= lines_per_task:
                ends = np.flatnonzero(np.frombuffer(block, np.uint8) == 10) + 1
                for i in ends[lines_per_task - count - 1::lines_per_task]:
                    end = pos + int(i)
                    yield {"kind": "lines", "path": os.fspath(path), "start": start, "end": end,
                           "first_line": line_no, "prime": prime if start else 0}
                    start, line_no = end, line_no + lines_per_task
                count = (count + n) % lines_per_task
            else:
                count += n
            pos += len(block)
    if pos > start:
        yield {"kind": "lines", "path": os.fspath(path), "start": start, "end": pos, "first_line": line_no,
               "prime": prime if start else 0}


def _leading_metadata(path: Path, fmt: str) -> int:
    """Lines at the top of a structured file that later ranges need to be read right (headers)."""
    if fmt == "zeek":
        n = 0
        with open(path, "rb") as fh:
            for line in fh:
                if not line.startswith(b"#"):
                    break
                n += 1
        return n
    return 1 if fmt in ("cicflowmeter", "netflow", "vpcflow") else 0  # a header (or the first record)


def _lines(task: dict, max_line_bytes: int):
    """(line number, raw bytes) of a task's range, read line by line with bounded memory as the local reader
    does (:func:`bounded_lines`); a whole (gzip) file that turns out damaged ends with (line number,
    exception), which becomes the same rejection the local reader gives."""
    if task["end"] < 0:
        n = 0
        try:
            path = Path(task["path"])
            cr = cr_terminated(path)
            with open_binary(path) as fh:
                for n, raw in enumerate(bounded_lines(fh, max_line_bytes, cr), start=1):
                    yield n, raw
        except UNREADABLE as e:
            yield n + 1, e
        return
    with open(task["path"], "rb") as fh:
        fh.seek(task["start"])
        n = task["first_line"]
        for raw in bounded_lines(fh, max_line_bytes):
            yield n, raw
            n += 1
            if fh.tell() >= task["end"]:  # ranges end at a line end
                return
