"""Raw text lines with a loghub-style header (``<Date> <Time> <Level> <Component>: <Content>``)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

from loglm.ingest.formats import LogFormat
from loglm.ingest.readers import LineAccount, Record, Rejection, accept, check_line, read_lines


class RawTextReader:
    """Lines with a loghub-style header (``<Date> <Time> ... <Content>``)."""

    def __init__(self, fmt: LogFormat, max_line_bytes: int = 65_536):
        self.fmt = fmt
        self.regex = fmt.regex()
        self.max_line_bytes = max_line_bytes
        # log timestamps repeat heavily (second resolution): parse each distinct stamp once
        self._parse_time = functools.lru_cache(maxsize=1 << 16)(fmt.time_parser)
        # the groups a line needs, fetched in one call (a groupdict of every header field cost twice as much)
        self._names = ("Content", *fmt.time_fields, *([fmt.label_field] if fmt.label_field else []),
                       *(name for name, _ in fmt.entity_fields))
        self._n_time = len(fmt.time_fields)

    def read(self, path: Path, account: LineAccount) -> Iterator[Record | Rejection]:
        return read_lines(self.parse_line, path, account, self.max_line_bytes)

    def parse_line(self, raw_bytes: bytes, source: str, line_no: int) -> Record | Rejection:
        text = check_line(raw_bytes, source, line_no, self.max_line_bytes)
        if isinstance(text, Rejection):
            return text
        m = self.regex.match(text)
        if m is None:
            return Rejection(source, line_no, f"header does not match format {self.fmt.name}")
        values = m.group(*self._names) if len(self._names) > 1 else (m.group("Content"),)
        n = self._n_time
        stamp = values[1] if n == 1 else " ".join(values[1:n + 1])
        try:
            ts = self._parse_time(stamp)
        except (ValueError, OverflowError):
            return Rejection(source, line_no, f"bad timestamp: {stamp[:64]!r}")
        rest = n + 1
        label = None
        if self.fmt.label_field:
            label, rest = values[rest], rest + 1
        ents = {kind: value for (_, kind), value in zip(self.fmt.entity_fields, values[rest:]) if value}
        return accept(Record(source, line_no, ts, values[0], text, label, ents))
