"""Raw text lines with a loghub-style header (``<Date> <Time> <Level> <Component>: <Content>``)."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from pathlib import Path

from loglm.ingest.cache import BoundedCache
from loglm.ingest.formats import LogFormat
from loglm.ingest.noyear import PlacedTimes, needs_year
from loglm.ingest.params import _ZERO_BYTES, Layout, apply_layout, entities_of, layout_of
from loglm.ingest.readers import (
    TS_MAX,
    TS_MIN,
    LineAccount,
    Record,
    Rejection,
    accept,
    check_line,
    read_lines,
    record_starts,
)
from loglm.ingest.templates import NAMESPACE_END, namespace_of, with_namespace

_FALLBACK = "fallback"  # a line shape the fast path leaves to parse_line (it rejects, or needs Unicode rules)


class RawTextReader:
    """Lines with a loghub-style header (``<Date> <Time> ... <Content>``)."""

    def __init__(self, fmt: LogFormat, max_line_bytes: int = 65_536, multiline: bool = False,
                 year_reference: str = "mtime", path: Path | None = None):
        self.fmt = fmt
        self.regex = fmt.regex()
        self.max_line_bytes = max_line_bytes
        # data.multiline: a line the header does not match continues the record before it (readers.join_continuations)
        self.multiline = multiline
        # log timestamps repeat heavily (second resolution): parse each distinct stamp once
        self._parse_time = functools.lru_cache(maxsize=1 << 16)(fmt.time_parser)
        # stamps without a year (syslog): placed in a year by loglm.ingest.noyear, from this input's last line
        # (path; a reader without one places lines as they arrive, before the clock: a stream)
        self._placed = None
        if needs_year(fmt.time_parser):
            self._placed = self._parse_time = PlacedTimes(fmt.time_parser, year_reference, path, self._line_stamp2000)
        # the groups a line needs, fetched in one call (a groupdict of every header field cost twice as much)
        self._names = ("Content", *fmt.time_fields, *([fmt.label_field] if fmt.label_field else []),
                       *(name for name, _ in fmt.entity_fields), *fmt.event_fields)
        self._n_ns = len(fmt.event_fields)  # the last groups fetched: the program (data.event_fields)
        self._n_time = len(fmt.time_fields)
        # Line plans (see event_of): a header pattern without digits matches a line and its shape alike
        self._plans: BoundedCache | None = None
        if self._n_time and isinstance(self.regex, re.Pattern) and not any(c.isdigit() for c in self.regex.pattern):
            self._plans = BoundedCache(16 << 20, 4096)
        self._tried = self._planned = 0

    def _line_stamp2000(self, text: str) -> float | None:
        """A line's timestamp read in year 2000, or None where the header or the stamp does not fit."""
        m = self.regex.match(text)
        if m is None:
            return None
        try:
            return self.fmt.time_parser(" ".join(m.group(f) or "" for f in self.fmt.time_fields))
        except (ValueError, OverflowError):
            return None

    def read(self, path: Path, account: LineAccount) -> Iterator[Record | Rejection]:
        if self._placed is not None and self._placed.path != path:  # another file: its own last line
            self._placed.for_input(path)
        return read_lines(self.parse_line, path, account, self.max_line_bytes, record_starts(self))

    def starts_record(self, raw: bytes) -> bool:
        """Whether a line starts a record (its header matches) rather than continuing the one before it."""
        text = raw.rstrip(b"\r\n").decode("utf-8", "replace")
        return bool(text.strip()) and self.regex.match(text) is not None

    def parse_line(self, raw_bytes: bytes, source: str, line_no: int) -> Record | Rejection:
        head, sep, _ = raw_bytes.rstrip(b"\r\n").partition(b"\n") if self.multiline else (raw_bytes, b"", b"")
        if sep:  # a record of several lines (data.multiline): its event is its first line's, its raw all of it
            item = self.parse_line(head, source, line_no)
            if isinstance(item, Record):
                item.raw = raw_bytes.decode("utf-8", "replace").rstrip("\r\n")
            return item
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
        namespace = namespace_of(values[len(values) - self._n_ns:]) if self._n_ns else None
        return accept(Record(source, line_no, ts, values[0], text, label, ents, namespace=namespace))

    # ------------------------------------------------------------------------------------------ fast path

    def event_of(self, raw: bytes, source: str, line_no: int, mask: bool = True):
        """``(source, line_no, ts, raw text, label, masked text, entities)`` of an accepted line, the same as
        :meth:`parse_line` followed by ``prepare.event_parts`` -- or None, and the caller takes that path.

        Prepare's hot path.  Every pattern involved (the header, the parameters) treats all digits alike, so
        where a line's fields and parameters lie depends only on its *shape* (ASCII digits 1-9 written as
        0).  Shapes repeat (3,026 in a million generated HDFS lines), so the header regex and the parameter
        layout run once per shape and each line is cut by the shape's plan.  Lines that are not ASCII, too
        long, rejected, or of a header pattern that names a digit take the general path.  The fast path
        turns itself off when shapes stop repeating (more than half new after 20,000 lines)."""
        plans = self._plans
        if plans is None or len(raw) > self.max_line_bytes or not raw.isascii() or \
                (self.multiline and b"\n" in raw.rstrip(b"\r\n")):
            return None  # a record of several lines (data.multiline) takes parse_line
        shape = raw.translate(_ZERO_BYTES)
        plan = plans.get(shape)
        if plan is None:
            self._planned += 1
            plan = self._plan(shape)
            plans.put(shape, plan)
        self._tried += 1
        if self._tried == 20_000 and self._planned > 10_000:
            self._plans = None
        if plan is _FALLBACK:
            return None
        end, (cs, ce), stamps, label_span, ent_spans, layout, distinct, ns_spans = plan
        text = raw[:end].decode("ascii")
        stamp = text[stamps[0][0]:stamps[0][1]] if len(stamps) == 1 else " ".join([text[a:b] for a, b in stamps])
        try:
            ts = self._parse_time(stamp)
        except (ValueError, OverflowError):
            return None
        if not (TS_MIN <= ts <= TS_MAX):
            return None
        content = text[cs:ce]
        if mask:
            masked, params = apply_layout(content, layout)
            ents = params if distinct else entities_of(params)  # one value per kind: nothing to merge
        else:
            masked, ents = content, {}
        if ns_spans:
            masked = with_namespace(namespace_of([text[a:b] for a, b in ns_spans]), masked)
        for kind, a, b in ent_spans:
            if b > a:
                ents.setdefault(kind, []).append(text[a:b])
        label = None if label_span is None else text[label_span[0]:label_span[1]]
        return source, line_no, ts, text, label, masked, ents

    def _plan(self, shape: bytes):
        """Where one shape's fields and parameters lie, or _FALLBACK (parse_line decides such lines)."""
        if b"\x00" in shape or NAMESPACE_END.encode() in shape:  # parse_line cleans the separator
            return _FALLBACK
        body = shape.rstrip(b"\r\n").decode("ascii")
        if not body.strip():
            return _FALLBACK
        m = self.regex.match(body)
        if m is None:
            return _FALLBACK
        spans = [m.span(name) for name in self._names]
        if any(a < 0 for a, _ in spans):  # an optional field absent: parse_line's None handling decides
            return _FALLBACK
        n = self._n_time
        content, stamps = spans[0], tuple(spans[1:n + 1])
        rest = n + 1
        label_span = None
        if self.fmt.label_field:
            label_span, rest = spans[rest], rest + 1
        # header entities: one value per kind, the last field naming a kind winning (parse_line's dict)
        by_kind: dict[str, tuple[int, int]] = {}
        for (_, kind), span in zip(self.fmt.entity_fields, spans[rest:]):
            if span[1] > span[0]:
                by_kind[kind] = span
        ent_spans = tuple((kind, a, b) for kind, (a, b) in by_kind.items())
        ns_spans = tuple(spans[len(spans) - self._n_ns:]) if self._n_ns else ()
        layout: Layout = layout_of(body[content[0]:content[1]])
        kinds = [kind for kind, _, _ in layout[1]]
        distinct = len(kinds) == len(set(kinds)) and not layout[2]
        return len(body), content, stamps, label_span, ent_spans, layout, distinct, ns_spans
