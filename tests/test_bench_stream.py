"""The stream bench's input (benchmarks.stream.copies): the shipped lines k times over, each copy a week
later with block ids of its own, so sessions of different copies never meet."""

from __future__ import annotations

import gzip
import re

from benchmarks.stream import SHIPPED, copies


def test_copies_are_a_week_apart_with_block_ids_of_their_own(tmp_path):
    shipped = gzip.open(SHIPPED, "rb").read().splitlines(keepends=True)
    out = tmp_path / "x2.log"
    assert copies(out, 2) == 2 * len(shipped)
    lines = out.read_bytes().splitlines(keepends=True)
    assert lines[: len(shipped)] == shipped  # the first copy as shipped
    first, second = shipped[0].split(b" "), lines[len(shipped)].split(b" ")
    assert first[0] == b"081109" and second[0] == b"081116" and first[1] == second[1]  # a week later, same time
    blocks = set(re.findall(rb"blk_-?\d+", b"".join(shipped)))
    again = set(re.findall(rb"blk_-?\d+", b"".join(lines[len(shipped):])))
    assert blocks and again and not blocks & again and all(b.endswith(b"01") for b in again)
