"""Header formats of raw log lines (loghub ``log_format`` notation) and their timestamp parsers."""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class LogFormat:
    name: str
    # loghub notation: "<Date> <Time> <Pid> <Level> <Component>: <Content>"
    header: str
    # fields whose values, joined by a space, are parsed into epoch seconds
    time_fields: tuple[str, ...]
    time_parser: Callable[[str], float]
    # field holding a per-line label (BGL: "-" = normal), if the format has one
    label_field: str | None = None
    # entity fields taken from the header (e.g. BGL node -> hostname)
    entity_fields: tuple[tuple[str, str], ...] = ()
    # header fields naming the program that wrote a line (syslog's Component): each event is the program's
    # (loglm.ingest.templates namespace), so the same message from sshd and from su are two events
    event_fields: tuple[str, ...] = ()

    def regex(self):
        return header_regex(self.header)


FIELD = re.compile(r"<[A-Za-z_]\w*>")


def header_regex(header: str):
    """Compile loghub notation into a regex with one named group per ``<Field>``.

    As in loghub's ``log_format``, the text between fields is a regular expression (escape ``[ ] ( ) |``
    to match them literally; optional pieces such as ``(\\[<PID>\\])?`` work) and any run of spaces matches
    any run of whitespace.

    Matching takes time linear in the line.  With plain lazy fields (``(?P<Date>.*?)\\s+(?P<Time>.*?)...``)
    Python's backtracking engine tries every way of splitting a line that does **not** match among the
    fields: one 90-word line took 3-30 s, so one crafted log line could stall ingest and detection.  So each
    field and the separator after it form an atomic group (``(?>(?P<Date>.*?)\\s+)``: the field ends at the
    first place its separator matches, and is never reconsidered) -- the same fields as before on every line
    of the loghub 2k sets, and faster.  A header whose separators cannot stand alone (a field inside an
    optional group, such as ``<Component>(\\[<PID>\\])?:``) is compiled with RE2 instead, whose matching time is
    linear by construction (same results, slower per line).
    """
    parts = [p for p in re.split(r"(<[A-Za-z_]\w*>)", header) if p]
    if "<Content>" not in parts:
        raise ValueError(f"log header {header!r} has no <Content> field")
    plain, atomic, all_atomic, i = [], [], True, 0
    while i < len(parts):
        part = parts[i]
        if not FIELD.fullmatch(part):
            plain.append(re.sub(r" +", r"\\s+", part))
            atomic.append(plain[-1])
            i += 1
            continue
        name = part[1:-1]
        field = f"(?P<{name}>.*?)" if name != "Content" else f"(?P<{name}>.*)"
        plain.append(field)
        nxt = parts[i + 1] if i + 1 < len(parts) and not FIELD.fullmatch(parts[i + 1]) else None
        sep = re.sub(r" +", r"\\s+", nxt) if nxt is not None else None
        if name != "Content" and sep is not None and _standalone(sep):
            atomic.append(f"(?>{field}{sep})")
            plain.append(sep)
            i += 2
            continue
        if name != "Content":
            all_atomic = False
        atomic.append(field)
        i += 1
    pattern = "^" + "".join(plain) + "$"
    try:
        re.compile(pattern)  # Python's engine names syntax errors precisely
    except re.error as e:
        raise ValueError(f"log header {header!r} is not a valid pattern: {e}") from None
    if all_atomic:
        return re.compile("^" + "".join(atomic) + "$")
    import re2

    try:
        return re2.compile(pattern)
    except re2.error as e:
        raise ValueError(f"log header {header!r} needs a backtracking regex feature ({e}); LogLM matches headers "
                         "in linear time only (RE2 syntax: no lookaround or backreferences)") from None


def _standalone(sep: str) -> bool:
    try:
        re.compile(sep)
    except re.error:
        return False
    return True


def _strptime(fmt: str) -> Callable[[str], float]:
    def parse(value: str) -> float:
        return datetime.strptime(value, fmt).replace(tzinfo=UTC).timestamp()

    parse.__name__ = f"strptime_{fmt}"
    if not fmt.endswith("%S") or "%f" in fmt:
        return parse

    @functools.lru_cache(maxsize=1 << 14)
    def minute(head: str) -> float | None:
        """The time of ``head`` + "00", when that is exactly how the format writes it (else None)."""
        try:
            t = datetime.strptime(head + "00", fmt)
        except ValueError:
            return None
        return t.replace(tzinfo=UTC).timestamp() if t.strftime(fmt) == head + "00" else None

    def parse_by_minute(value: str) -> float:
        """``parse`` with one strptime per minute, not per second (logs stamped to the second rarely repeat a
        stamp, but minutes repeat): a value written as the format writes it (zero-padded two-digit seconds
        last) is its minute's time plus its seconds; anything else goes through strptime as it is."""
        sec = value[-2:]
        if len(value) > 2 and sec.isascii() and sec.isdigit() and sec < "60":
            base = minute(value[:-2])
            if base is not None:
                return base + int(sec)
        return parse(value)

    parse_by_minute.__name__ = parse.__name__
    return parse_by_minute


def _strptime_no_year(fmt: str) -> Callable[[str], float]:
    """Headers without a year (syslog): read in leap year 2000 so that 'Feb 29' parses; the reader then
    places each time in its year (:mod:`loglm.ingest.noyear`, ``data.year_reference``)."""
    full = _strptime("%Y " + fmt)

    def parse(value: str) -> float:
        return full("2000 " + value)

    parse.__name__ = f"strptime_no_year_{fmt}"
    parse.no_year = True  # the reader places it in a year (loglm.ingest.noyear)
    return parse


def _epoch(value: str) -> float:
    return float(value)


def _iso(value: str) -> float:
    t = datetime.fromisoformat(value)
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


EPOCH_UNITS = {"epoch_ms": 10**3, "epoch_us": 10**6, "epoch_ns": 10**9}  # ints: digits divide exactly rounded


def time_parser(time_format: str) -> Callable[[str], float]:
    """``epoch`` (seconds), ``epoch_ms``, ``epoch_us``, ``epoch_ns`` (goflow2's ``time_flow_start_ns``),
    ``iso`` (ISO 8601, UTC unless it says otherwise), a strptime format, or ``noyear:<strptime format>``."""
    if time_format == "epoch":
        return _epoch
    if time_format in EPOCH_UNITS:
        scale = EPOCH_UNITS[time_format]
        return lambda value: int(value) / scale if value.isdigit() else float(value) / scale
    if time_format == "iso":
        return _iso
    if time_format.startswith("noyear:"):
        return _strptime_no_year(time_format[len("noyear:"):])
    return _strptime(time_format)


def _preset(name: str, header: str, time_fields: tuple[str, ...], time_format: str, **kw) -> LogFormat:
    return LogFormat(name=name, header=header, time_fields=time_fields, time_parser=time_parser(time_format), **kw)


# One preset per loghub system (header notation as published with loghub's benchmarks), and syslog's.
PRESETS: dict[str, LogFormat] = {p.name: p for p in [
    _preset("hdfs", "<Date> <Time> <Pid> <Level> <Component>: <Content>", ("Date", "Time"), "%y%m%d %H%M%S"),
    _preset("bgl", "<Label> <Timestamp> <Date> <Node> <Time> <NodeRepeat> <Type> <Component> <Level> <Content>",
            ("Time",), "%Y-%m-%d-%H.%M.%S.%f", label_field="Label", entity_fields=(("Node", "hostname"),)),
    _preset("android", "<Date> <Time>  <Pid>  <Tid> <Level> <Component>: <Content>", ("Date", "Time"),
            "noyear:%m-%d %H:%M:%S.%f"),
    _preset("apache", r"\[<Time>\] \[<Level>\] <Content>", ("Time",), "%a %b %d %H:%M:%S %Y"),
    _preset("hadoop", r"<Date> <Time> <Level> \[<Process>\] <Component>: <Content>", ("Date", "Time"),
            "%Y-%m-%d %H:%M:%S,%f"),
    _preset("healthapp", r"<Time>\|<Component>\|<Pid>\|<Content>", ("Time",), "%Y%m%d-%H:%M:%S:%f"),
    _preset("hpc", "<LogId> <Node> <Component> <State> <Time> <Flag> <Content>", ("Time",), "epoch",
            entity_fields=(("Node", "hostname"),)),
    _preset("linux", r"<Month> <Date> <Time> <Level> <Component>(\[<PID>\])?: <Content>", ("Month", "Date", "Time"),
            "noyear:%b %d %H:%M:%S", entity_fields=(("Level", "hostname"),)),
    _preset("mac", r"<Month>  <Date> <Time> <User> <Component>\[<PID>\]( \(<Address>\))?: <Content>",
            ("Month", "Date", "Time"), "noyear:%b %d %H:%M:%S", entity_fields=(("User", "hostname"),)),
    _preset("openssh", r"<Date> <Day> <Time> <Component> sshd\[<Pid>\]: <Content>", ("Date", "Day", "Time"),
            "noyear:%b %d %H:%M:%S", entity_fields=(("Component", "hostname"),)),
    _preset("openstack", r"<Logrecord> <Date> <Time> <Pid> <Level> <Component> \[<ADDR>\] <Content>",
            ("Date", "Time"), "%Y-%m-%d %H:%M:%S.%f"),
    _preset("proxifier", r"\[<Time>\] <Program> - <Content>", ("Time",), "noyear:%m.%d %H:%M:%S"),
    _preset("spark", "<Date> <Time> <Level> <Component>: <Content>", ("Date", "Time"), "%y/%m/%d %H:%M:%S"),
    _preset("thunderbird", r"<Label> <Timestamp> <Date> <User> <Month> <Day> <Time> <Location> "
            r"<Component>(\[<PID>\])?: <Content>", ("Timestamp",), "epoch", label_field="Label",
            entity_fields=(("User", "hostname"),)),
    _preset("windows", "<Date> <Time>, <Level>                  <Component>    <Content>", ("Date", "Time"),
            "%Y-%m-%d %H:%M:%S"),
    _preset("zookeeper", r"<Date> <Time> - <Level>  \[<Node>:<Component>@<Id>\] - <Content>", ("Date", "Time"),
            "%Y-%m-%d %H:%M:%S,%f"),
    # syslog as servers write it: rsyslog's traditional file format (RFC 3164 timestamps, no year), its
    # high-precision file format (ISO 8601, the default of current distributions) and RFC 5424 (the
    # network protocol, <PRI>VERSION first; structured data stays in the content).  The host is an entity.
    # The program (syslog's tag, RFC 5424's APP-NAME) is part of each event (data.event_fields).
    # The program (syslog's tag, RFC 5424's APP-NAME) is part of each event (data.event_fields); a tag's
    # "[pid]" is read with it and dropped from the event (raw_text.program), which keeps these headers free of
    # optional groups: they match in one pass and qualify for the reader's shape plans (5x faster than
    # "<Component>(\[<Pid>\])?:", which needs RE2; the same fields on every line otherwise).  RFC 5424 is read
    # by its header as it is: planned by shape it was slower (its PRI and PROCID make many shapes).
    _preset("syslog", r"<Month> <Day> <Time> <Host> <Component>: <Content>", ("Month", "Day", "Time"),
            "noyear:%b %d %H:%M:%S", entity_fields=(("Host", "hostname"),), event_fields=("Component",)),
    _preset("syslog_iso", r"<Time> <Host> <Component>: <Content>", ("Time",), "iso",
            entity_fields=(("Host", "hostname"),), event_fields=("Component",)),
    _preset("rfc5424", "<<Pri>>1 <Time> <Host> <App> <ProcId> <MsgId> <Content>", ("Time",), "iso",
            entity_fields=(("Host", "hostname"),), event_fields=("App",)),
]}


def get_format(name: str) -> LogFormat:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown log format {name!r}; known presets: {sorted(PRESETS)}, or give "
                         "data.header (loghub notation) with data.time_fields and data.time_format") from None


def format_of(data) -> LogFormat:
    """The format a data config names: a preset, or its own ``data.header`` notation; ``data.event_fields``
    (when set) names the program fields in place of the preset's."""
    fmt = _format_of(data)
    fields = getattr(data, "event_fields", None)
    if fields is not None:
        fmt = dataclasses.replace(fmt, event_fields=tuple(fields))
    missing = [f for f in fmt.event_fields if f not in fmt.regex().groupindex]
    if missing:
        raise ValueError(f"data.event_fields names {missing}, not a field of the header "
                         f"{fmt.header!r} (format {fmt.name})")
    return fmt


def event_fields_of(data) -> tuple[str, ...]:
    """The fields naming the program each event of ``data`` carries: a raw text format's header fields (a
    preset's own unless ``data.event_fields`` is set), a JSON lines reader's fields; none for the others."""
    from loglm.config import NOT_LINE_TEXT

    if data.format == "jsonl":
        return tuple(data.event_fields or ())
    if data.format in NOT_LINE_TEXT:
        return ()
    try:
        return format_of(data).event_fields
    except ValueError:
        return ()


def _format_of(data) -> LogFormat:
    if data.header:
        if not data.time_fields:
            raise ValueError("data.header is set but data.time_fields is empty: name the header fields "
                             "holding the timestamp (e.g. [Date, Time]) and data.time_format")
        fmt = LogFormat(name=data.format or "custom", header=data.header, time_fields=tuple(data.time_fields),
                        time_parser=time_parser(data.time_format), label_field=data.label_field,
                        entity_fields=tuple(data.entity_fields.items()))
        rx = fmt.regex()
        missing = [f for f in (*fmt.time_fields, *(k for k, _ in fmt.entity_fields)) if f not in rx.groupindex]
        if missing:
            raise ValueError(f"data.header {data.header!r} has no field(s) {missing} named in time/entity fields")
        return fmt
    return get_format(data.format)
