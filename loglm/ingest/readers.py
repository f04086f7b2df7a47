"""What every reader shares: records, rejections, line accounting, input expansion, and the reader factory.

A reader turns one input file into a stream of accepted :class:`Record` s and :class:`Rejection` s; every
line is one or the other, except the metadata lines of structured formats (Zeek ``#fields`` headers, a CSV
header row), which are counted as such.  Readers live one per module: ``raw_text`` (loghub-style headers),
``json_lines``, ``zeek`` (conn.log) and ``flow_table`` (CICFlowMeter / NetFlow CSV and Parquet).
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(slots=True)
class Record:
    source: str
    line_no: int  # 1-based, within source
    ts: float
    content: str
    raw: str
    label: str | None = None
    header_entities: dict[str, str] = field(default_factory=dict)
    # structured records (network flows): canonical fields, turned into a flow sentence by loglm.ingest.flows
    fields: dict | None = None
    # content is a field sentence (loglm.ingest.json_lines, data.message_fields): kept as it is, never masked
    exact: bool = False
    # the program that wrote the line (data.event_fields): its events' namespace (loglm.ingest.templates)
    namespace: str | None = None


@dataclass(slots=True)
class Rejection:
    source: str
    line_no: int
    reason: str


@dataclass
class LineAccount:
    """Reconciles read = accepted + rejected, with reasons."""

    read: int = 0
    accepted: int = 0
    rejected: int = 0
    metadata: int = 0  # header/comment lines of structured formats: neither events nor errors
    # data.multiline: lines that continue the record before them (a stack trace), part of that record's event
    continued: int = 0
    reasons: Counter = field(default_factory=Counter)

    def reject(self, reason: str) -> None:
        self.rejected += 1
        self.reasons[reason.split(":")[0]] += 1

    def as_dict(self) -> dict:
        out = {"read": self.read, "accepted": self.accepted, "rejected": self.rejected,
               "metadata": self.metadata, "rejected_by_reason": dict(self.reasons)}
        if self.continued:
            out["continued"] = self.continued
        return out

    def reconciles(self) -> bool:
        return self.read == self.accepted + self.rejected + self.metadata + self.continued


class LongLine(bytes):
    """The first bytes of a line longer than the limit; ``total`` is the whole line's length, counted while
    the rest was read and dropped (never held in memory)."""

    total: int = 0


def cr_terminated(path: Path) -> bool:
    """A file whose lines end with a bare CR (classic Mac OS, some network gear): its first 64 KiB hold CRs
    and no LF.  Such a file used to be read as one line (300 records: read=1, 27 false alerts)."""
    if not path.is_file():  # a pipe: sniffing would consume what the reader must see
        return False
    try:
        with open_binary(path) as fh:
            head = fh.read(1 << 16)
    except (OSError, EOFError, zlib.error):
        return False  # the reader reports the damage
    return b"\r" in head and b"\n" not in head


def _cr_lines(fh, max_line_bytes: int) -> Iterator[bytes]:
    """Lines ending in a bare CR, with the same bound as :func:`bounded_lines`."""
    limit = max_line_bytes + 1
    buf, total = b"", 0
    while True:
        chunk = fh.read(1 << 16)
        if not chunk:
            break
        parts = chunk.split(b"\r")
        for k, part in enumerate(parts):
            total += len(part)
            if len(buf) < limit:
                buf = (buf + part)[:limit]
            if k < len(parts) - 1:  # a CR ends this line
                yield line_of(buf + b"\r" if total < limit else buf, total + 1)
                buf, total = b"", 0
    if total:
        yield line_of(buf, total)


def line_of(head: bytes, total: int) -> bytes:
    """``head`` itself, or a :class:`LongLine` when the whole line (``total`` bytes) was longer."""
    if total <= len(head):
        return head
    long = LongLine(head)
    long.total = total
    return long


def bounded_lines(fh, max_line_bytes: int, cr: bool = False) -> Iterator[bytes]:
    """Lines of a binary stream, each read with at most ``max_line_bytes + 1`` bytes in memory: a longer
    line comes back as a :class:`LongLine` (its start and its length).  A 2 GiB line without a newline
    (a 2 MB gzip) used to be read whole before its length was checked (4.3 GB RSS).  ``cr``: lines end in
    a bare CR (:func:`cr_terminated`)."""
    if cr:
        yield from _cr_lines(fh, max_line_bytes)
        return
    limit = max_line_bytes + 1
    while True:
        line = fh.readline(limit)
        if not line:
            return
        if len(line) < limit or line.endswith(b"\n"):
            yield line
            continue
        total = len(line)
        while True:
            more = fh.readline(1 << 20)
            total += len(more)
            if not more or more.endswith(b"\n"):
                break
        long = LongLine(line)
        long.total = total
        yield long


def check_line(raw_bytes: bytes, source: str, line_no: int, max_line_bytes: int) -> str | Rejection:
    """The decoded text of one input line, or why it is refused (checks every reader shares)."""
    if len(raw_bytes) > max_line_bytes:
        return Rejection(source, line_no, f"line too long: {getattr(raw_bytes, 'total', len(raw_bytes))} bytes > "
                                          f"{max_line_bytes}")
    try:
        text = raw_bytes.decode("utf-8")
    except UnicodeDecodeError as e:
        return Rejection(source, line_no, f"undecodable bytes: {e.reason} at byte {e.start}")
    text = text.rstrip("\r\n")
    if not text.strip():
        return Rejection(source, line_no, "empty line")
    if "\x00" in text:
        return Rejection(source, line_no, "NUL byte in line")
    return text


# timestamps a calendar can hold (year 1 .. 9999): windows and alerts turn them into dates
TS_MIN, TS_MAX = -62_135_596_800.0, 253_402_300_799.0


def accept(record: Record) -> Record | Rejection:
    """The record, or a rejection when its timestamp is not a real point in time."""
    ts = record.ts
    if not (TS_MIN <= ts <= TS_MAX):  # also false for NaN
        return Rejection(record.source, record.line_no, f"bad timestamp: {ts!r} out of range")
    return record


def tally(items: Iterator[Record | Rejection], account: LineAccount) -> Iterator[Record | Rejection]:
    for item in items:
        if isinstance(item, Rejection):
            account.reject(item.reason)
        else:
            account.accepted += 1
        yield item


# what reading a damaged file raises: truncated gzip (EOFError), a corrupt one (BadGzipFile is an OSError,
# zlib.error), an I/O error
UNREADABLE = (OSError, EOFError, zlib.error)


def unreadable(source: str, lines_read: int, exc: BaseException) -> Rejection:
    """The rest of a file that cannot be read, as one rejection naming the file, where, and why."""
    return Rejection(source, lines_read + 1, f"unreadable file: {type(exc).__name__}: {exc} "
                                             f"(after line {lines_read}; the lines before it were read)")


def parse_line_safely(parse_line, raw: bytes, source: str, line_no: int) -> Record | Rejection | None:
    """One line through a reader, which must never take the run down: whatever a hostile line makes a
    parser raise (a 5,000-digit JSON number, a bad escape in a Zeek header) rejects that line, with the reason."""
    try:
        return parse_line(raw, source, line_no)
    except Exception as e:  # noqa: BLE001 - any parser failure on untrusted input is that line's rejection
        return Rejection(source, line_no, f"unparseable line: {type(e).__name__}: {str(e)[:200]}")


class Continuations:
    """``data.multiline``: lines in, records out, where a line ``starts`` does not accept continues the record
    before it (a stack trace under its log line).  ``push`` returns the records a line completes, ``flush``
    the one still held (at the input's end, or when a stream stops).  A record is (first line number, its
    lines joined by newlines, how many continuation lines), bounded at ``max_line_bytes`` (the rest of a very
    long trace is counted, not kept); a line too long to read whole, and a file's lines before its first
    record, stand alone; anything else (a read error) passes through."""

    def __init__(self, starts, max_line_bytes: int):
        self.starts, self.max_line_bytes = starts, max_line_bytes
        self.pending: tuple[int, bytes] | None = None
        self.parts: list[bytes] = []
        self.size = self.extra = 0

    def push(self, n: int, raw) -> list[tuple[int, bytes, int]]:
        whole = isinstance(raw, bytes) and not isinstance(raw, LongLine)
        if self.pending is not None and whole and not self.starts(raw):
            self.extra += 1
            if self.size < self.max_line_bytes:
                part = raw.rstrip(b"\r\n")[: self.max_line_bytes - self.size]
                self.parts.append(part)
                self.size += len(part) + 1
            return []
        out = self.flush()
        if whole:
            self.pending, self.parts, self.size = (n, raw), [raw.rstrip(b"\r\n")], len(raw)
        else:
            out.append((n, raw, 0))
        return out

    def flush(self) -> list[tuple[int, bytes, int]]:
        if self.pending is None:
            return []
        n, raw = self.pending
        out = [(n, b"\n".join(self.parts) + b"\n" if self.extra else raw, self.extra)]
        self.pending, self.parts, self.extra = None, [], 0
        return out


def join_continuations(lines: Iterable[tuple[int, bytes]], starts, max_line_bytes: int
                       ) -> Iterator[tuple[int, bytes, int]]:
    """(first line number, record, continuation lines) from (line number, line) pairs: :class:`Continuations`."""
    joiner = Continuations(starts, max_line_bytes)
    for n, raw in lines:
        yield from joiner.push(n, raw)
    yield from joiner.flush()


def record_starts(reader):
    """The reader's test for a line that starts a record, where its data settings join continuation lines
    (``data.multiline``); None otherwise."""
    return reader.starts_record if getattr(reader, "multiline", False) else None


def read_lines(parse_line, path: Path, account: LineAccount, max_line_bytes: int = 65_536, starts=None
               ) -> Iterator[Record | Rejection]:
    """Every line of a text file through ``parse_line(raw, source, line_no)`` (None = a metadata line),
    accounted: the one line loop of the text readers.  Lines are read bounded (:func:`bounded_lines`);
    with ``starts`` (:func:`record_starts`), continuation lines join the record before them."""
    source = os.fspath(path)

    def items():
        line_no = 0
        cr = cr_terminated(path)
        try:
            with open_binary(path) as fh:
                pairs = enumerate(bounded_lines(fh, max_line_bytes, cr), start=1)
                records = join_continuations(pairs, starts, max_line_bytes) if starts else \
                    ((n, raw, 0) for n, raw in pairs)
                for line_no, raw_bytes, extra in records:
                    account.read += 1 + extra
                    account.continued += extra
                    line_no += extra  # the last line read, should the file break after it
                    item = parse_line_safely(parse_line, raw_bytes, source, line_no - extra)
                    if item is None:
                        account.metadata += 1
                    else:
                        yield item
        except UNREADABLE as e:  # a truncated or corrupt file: its lines so far stand, the run goes on
            account.read += 1
            yield unreadable(source, line_no, e)

    return tally(items(), account)


def event_parser(reader, mask: bool):
    """A line parser for :func:`read_lines` that yields an accepted line as the tuple ``(source, line_no, ts,
    raw, label, masked, entities)`` through the reader's fast path (``event_of``: raw text lines) where it
    can, and the reader's Record or Rejection where it cannot; None for a reader without a fast path.
    Prepare's read tasks and batch detection's reading share it."""
    fast = getattr(reader, "event_of", None)
    if fast is None:
        return None
    general = reader.parse_line

    def parse(raw: bytes, source: str, line_no: int):
        try:
            event = fast(raw, source, line_no, mask)
        except Exception:  # noqa: BLE001 - whatever the fast path trips on, the general path decides
            event = None
        return general(raw, source, line_no) if event is None else event

    return parse


FLOW_FORMATS = ("zeek", "cicflowmeter", "netflow", "vpcflow")


def formats_of(data) -> set[str]:
    """Every format a data config reads: its own and its ``data.sources`` items'."""
    return {data.format, *(src.get("format", data.format) for src in data.sources)}


def reads_flows(data) -> bool:
    """Whether any input is read as flows (a flow format; Zeek logs read as events by data.message_fields
    are not)."""
    settings = [(data.format, data.message_fields)] + [
        (src.get("format", data.format), src.get("message_fields", data.message_fields)) for src in data.sources]
    return any(fmt in FLOW_FORMATS and not (fmt == "zeek" and fields) for fmt, fields in settings)


def source_config(data, path: str | Path):
    """The data settings ``path`` is read with: those of the first ``data.sources`` item whose ``match``
    globs its path or name, else ``data``'s own."""
    from fnmatch import fnmatch

    for src in data.sources:
        if fnmatch(str(path), src["match"]) or fnmatch(Path(path).name, src["match"]):
            return source_data(data, src)
    return data


def source_data(data, src: dict):
    """``data`` with one ``data.sources`` item's reader settings.  A source of another format that names no
    program fields takes its own format's (a preset's), not the ones ``data.event_fields`` names for the
    main format: a syslog header's ``Component`` means nothing to a Zeek log."""
    import dataclasses

    settings = {k: v for k, v in src.items() if k != "match"}
    if src.get("format", data.format) != data.format and "event_fields" not in src:
        settings["event_fields"] = None
    return dataclasses.replace(data, sources=[], **settings)


def make_reader(data, path: str | Path | None = None, live: bool = False):
    """The reader a data config names (``data.format``); for one input ``path``, the reader its
    ``data.sources`` item names.  ``live``: the lines arrive as they are written (a stream), so stamps
    without a year are placed before the clock, not before the file's last line."""
    if path is not None and data.sources:
        data = source_config(data, path)
    fmt = data.format
    year_path = None if live or path is None or not Path(path).is_file() else Path(path)  # noyear: stamps
    if fmt == "jsonl":
        from loglm.ingest.json_lines import JsonLinesReader

        return JsonLinesReader(data, year_path)
    if fmt == "cef":
        from loglm.ingest.cef import CefReader

        return CefReader(data)
    if fmt == "zeek":
        from loglm.ingest.zeek import ZeekConnReader

        return ZeekConnReader(data)
    if fmt in ("cicflowmeter", "netflow", "vpcflow"):
        from loglm.ingest.flow_table import FlowTableReader

        return FlowTableReader(data)
    from loglm.ingest.formats import format_of
    from loglm.ingest.raw_text import RawTextReader

    return RawTextReader(format_of(data), data.max_line_bytes, data.multiline, data.year_reference, year_path)


def expand_inputs(inputs: Iterable[str]) -> list[Path]:
    """Files as given, directories expanded to their files in name order; a missing path is an error."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            paths.extend(sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith(".")))
        elif p.is_file():
            paths.append(p)
        elif p.exists():  # a named pipe or device (e.g. a FIFO a log shipper writes into): read as a stream
            paths.append(p)
        else:
            raise FileNotFoundError(f"input not found: {item}")
    if not paths:
        raise FileNotFoundError(f"no input files in {list(inputs)}")
    return paths


def open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


