"""The year of a timestamp written without one (traditional syslog ``Dec  4 20:00:01``, ``data.time_format``
``noyear:...``).

A line is read in leap year 2000 (so ``Feb 29`` parses) and then placed in the latest year that does not put
it after a reference time (with a day's slack for clocks and time zones: these stamps are local time, read
as UTC).  The reference (``data.year_reference``):

- ``mtime`` (the default): a file's **last line**, placed before the file's modification time (its last
  write).  Every line of the file is then placed before that last line, so a file crossing New Year reads
  Dec 31 -> Jan 1 forward, whatever the modification time (a copied archive's included); only the absolute
  year rests on the modification time.  A gzipped file is read through once to find its last line.
- ``now``: the same, the clock at the time the reader is made.
- a year (``2024``: the logs end in 2024) or an ISO date (``2024-06-30``: they end on or before that day).

Streams (``follow=true``, stdin) place each line before the clock as it arrives (or before the year or date
given), never before a last line.  Before this module every such line was placed in 2000: a finding's time
was 26 years off, and a log crossing New Year went back 366 days at midnight.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

SLACK_S = 86_400.0  # a stamp up to a day after the reference is still the reference's year
TAIL_BYTES = 1 << 16  # the end of a file searched for its last line with a timestamp
_Y2000 = datetime(2000, 1, 1, tzinfo=UTC)


def check_reference(value) -> str | None:
    """Why ``data.year_reference`` cannot be used, or None."""
    try:
        reference_time(value)
    except ValueError as e:
        return str(e)
    return None


def reference_time(value) -> float | None:
    """The reference as a time, or None for ``mtime`` (per file) and ``now`` (at use)."""
    text = str(value).strip()
    if text in ("mtime", "now"):
        return None
    if text.isdigit() and len(text) == 4:
        return datetime(int(text), 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"data.year_reference={value!r}: expected mtime, now, a year (2024) or an ISO date "
                         "(2024-06-30): when the logs end") from None
    if len(text) == 10:  # a date: the logs end on or before that day
        t += timedelta(days=1, seconds=-1)
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def place(ts2000: float, reference: float) -> float:
    """``ts2000`` (read in year 2000) in the latest year that puts it at most a day after ``reference``."""
    stamp = _Y2000 + timedelta(seconds=ts2000 - _Y2000.timestamp())
    year = datetime.fromtimestamp(reference + SLACK_S, UTC).year
    for y in range(year, year - 9, -1):  # Feb 29 waits for a leap year
        try:
            t = stamp.replace(year=y).timestamp()
        except ValueError:
            continue
        if t <= reference + SLACK_S:
            return t
    raise ValueError(f"no year places {stamp:%b %d} before {datetime.fromtimestamp(reference, UTC):%Y-%m-%d}")


def _tail(path: Path) -> bytes:
    """The last TAIL_BYTES of a file (of its decompressed text for .gz, read through once)."""
    if path.suffix == ".gz":
        tail = b""
        with gzip.open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                tail = (tail + block)[-TAIL_BYTES:]
        return tail
    with open(path, "rb") as fh:
        size = fh.seek(0, 2)
        fh.seek(max(0, size - TAIL_BYTES))
        return fh.read()


def last_stamp(path: Path, stamp_of: Callable[[str], float | None]) -> float | None:
    """The year-2000 time of the file's last line that has one (``stamp_of`` reads a line, None when it
    does not fit), from its last TAIL_BYTES; None when none does."""
    for raw in reversed(_tail(path).splitlines()):
        ts = stamp_of(raw.decode("utf-8", "replace"))
        if ts is not None:
            return ts
    return None


_FEB29 = datetime(2000, 2, 29, tzinfo=UTC).timestamp()
_MAR1 = datetime(2000, 3, 1, tzinfo=UTC).timestamp()


class _Before:
    """:func:`place` before one fixed reference, in arithmetic: the shift from 2000 to the reference's year
    and the one before, a day less after February in a common year (Feb 29 takes :func:`place`)."""

    def __init__(self, reference: float):
        self.reference, self.cut = reference, reference + SLACK_S
        year = datetime.fromtimestamp(self.cut, UTC).year
        self.shifts = [self._shift(y) for y in (year, year - 1)]

    @staticmethod
    def _shift(year: int) -> tuple[float, float]:
        """(before March, from March): what moves a year-2000 time into ``year``."""
        base = datetime(year, 1, 1, tzinfo=UTC).timestamp() - _Y2000.timestamp()
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        return base, base if leap else base - 86_400.0

    def __call__(self, ts2000: float) -> float:
        if _FEB29 <= ts2000 < _MAR1:
            return place(ts2000, self.reference)
        for early, late in self.shifts:
            t = ts2000 + (late if ts2000 >= _MAR1 else early)
            if t <= self.cut:
                return t
        return place(ts2000, self.reference)


class YearPlacer:
    """Places year-2000 times of one input: ``placer(ts2000) -> ts``.  ``fixed`` says whether the result
    depends on the stamp alone (and may be cached by it)."""

    def __init__(self, setting, path: Path | None, stamp_of: Callable[[str], float | None]):
        given = reference_time(setting)
        self.fixed = path is not None or given is not None
        if path is None:  # a stream: each line before the clock as it arrives, or before the year given
            self.reference = given
            self._before = None if given is None else _Before(given)
            return
        reference = given
        if reference is None:
            reference = path.stat().st_mtime if str(setting).strip() == "mtime" else time.time()
        last = last_stamp(path, stamp_of)
        self.reference = reference if last is None else place(last, reference)
        self._before = None if self.reference is None else _Before(self.reference)

    def __call__(self, ts2000: float) -> float:
        if self._before is not None:
            return self._before(ts2000)
        return place(ts2000, time.time())


class PlacedTimes:
    """A ``noyear:`` time parser whose times are placed in their year for one input: ``times(stamp) -> ts``.
    The input's last line is read (``stamp_of``: a line's year-2000 time, or None) at the first stamp, not
    before; a reference fixed by then caches by stamp, a stream's (the clock) places each one.  ``for_input``
    starts over for another file."""

    def __init__(self, parse: Callable[[str], float], setting, path: Path | None,
                 stamp_of: Callable[[str], float | None]):
        self.parse, self.setting, self.stamp_of = parse, setting, stamp_of
        self.for_input(path)

    def for_input(self, path: Path | None) -> None:
        self.path, self._placer, self._cached = path, None, None

    def __call__(self, stamp: str) -> float:
        if self._cached is not None:
            return self._cached(stamp)
        if self._placer is None:
            import functools

            placer = self._placer = YearPlacer(self.setting, self.path, self.stamp_of)
            if placer.fixed:
                parse = self.parse
                self._cached = functools.lru_cache(maxsize=1 << 16)(lambda s: placer(parse(s)))
                return self._cached(stamp)
        return self._placer(self.parse(stamp))


def needs_year(parse: Callable) -> bool:
    """Whether a time parser reads stamps without a year (``noyear:`` formats)."""
    return getattr(parse, "no_year", False)
