"""ArcSight Common Event Format (CEF), as firewalls, IDSs, WAFs and endpoint agents forward their events to a
SIEM: one event per line, a syslog prefix optional::

    <134>Dec  4 20:00:01 fw01 CEF:0|Palo Alto Networks|PAN-OS|11.1|end|TRAFFIC|3|rt=1733342401000 src=10.0.0.5 ...

The header's seven fields (``\\|`` and ``\\\\`` escaped) take ArcSight's names (``cefVersion``, ``deviceVendor``,
``deviceProduct``, ``deviceVersion``, ``deviceEventClassId``, ``name``, ``severity``); the extension's
``key=value`` pairs (values may hold spaces; ``\\=``, ``\\\\``, ``\\n`` escaped) keep their keys; a syslog
prefix gives ``syslog.host`` and ``syslog.time``.  The event is then read as a JSON record is
(:class:`~loglm.ingest.json_lines.JsonLinesReader`): a field sentence of ``data.message_fields`` (by default
vendor, product, event class, name, action and outcome: each kind of event its own template, values kept
exactly), entities from ``data.entity_fields`` (by default ``src``, ``dst``, ``suser``, ``shost``,
``dvchost``).

The time is ``rt`` (or ``end``, ``start``, the syslog prefix's ISO time): milliseconds since the epoch, or
CEF's ``MMM dd yyyy HH:mm:ss[.SSS] [UTC|GMT|Z|+hh:mm]``, or ISO 8601.  A zone named otherwise (``EST``) is
rejected with its reason rather than guessed.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

from loglm.ingest.json_lines import JsonLinesReader
from loglm.ingest.readers import Record, Rejection, check_line

HEADER_KEYS = ("cefVersion", "deviceVendor", "deviceProduct", "deviceVersion", "deviceEventClassId", "name",
               "severity")
DEFAULT_MESSAGE_FIELDS = ["deviceVendor", "deviceProduct", "deviceEventClassId", "name", "act", "outcome"]
DEFAULT_ENTITY_FIELDS = {"src": "src_ip", "dst": "dst_ip", "suser": "user", "shost": "hostname", "dvchost": "device"}
TIME_KEYS = ("rt", "end", "start", "syslog.time")

_KEY = re.compile(r"(?:^|(?<=\s))([A-Za-z0-9_.\[\]-]+)=")  # an extension key: at the start or after a space
_UNESCAPE = {"\\": "\\", "=": "=", "|": "|", "n": "\n", "r": "\r"}
_PRI = re.compile(r"^<\d{1,3}>")
_ISO_START = re.compile(r"^\d{4}-\d{2}-\d{2}T")
_MONTHS = {"Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"}
_CEF_TIME = re.compile(r"^([A-Z][a-z]{2}) +(\d{1,2}) (\d{4}) (\d{2}:\d{2}:\d{2})(\.\d{1,6})?(?: +(\S+))?$")


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in _UNESCAPE:
            out.append(_UNESCAPE[text[i + 1]])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _split_header(text: str) -> list[str]:
    """The header's pipe-separated fields (``\\|`` inside a field) and what follows the seventh pipe."""
    fields, cur, i = [], [], 0
    while i < len(text) and len(fields) < 7:
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur.append(text[i:i + 2])
            i += 2
            continue
        if c == "|":
            fields.append(_unescape("".join(cur)))
            cur = []
        else:
            cur.append(c)
        i += 1
    return fields + [text[i:]] if len(fields) == 7 else fields


def _extension(text: str) -> dict[str, str]:
    """``key=value`` pairs; a value runs to the space before the next unescaped ``key=``."""
    keys = list(_KEY.finditer(text))
    out = {}
    for m, nxt in zip(keys, keys[1:] + [None]):
        value = text[m.end():nxt.start() if nxt else len(text)]
        out[m.group(1)] = _unescape(value.rstrip() if nxt else value.rstrip("\r\n "))
    return out


def parse_cef(text: str) -> dict | str:
    """One CEF line as a flat record, or the reason it is not one."""
    at = text.find("CEF:")
    if at < 0:
        return "not a CEF event: no 'CEF:' header"
    parts = _split_header(text[at + 4:])
    if len(parts) < 8:
        return f"CEF header has {len(parts)} of its 7 fields (Version|Vendor|Product|Version|Class ID|Name|Severity)"
    record = dict(zip(HEADER_KEYS, parts[:7]))
    record.update(_extension(parts[7]))
    for key, value in _syslog_prefix(text[:at]).items():
        record.setdefault(key, value)
    return record


def _syslog_prefix(prefix: str) -> dict[str, str]:
    """``syslog.time`` and ``syslog.host`` of what precedes ``CEF:``: RFC 5424 (``<PRI>1 TIME HOST ...``), an
    ISO time then the host, or RFC 3164 (``<PRI>Mmm dd hh:mm:ss HOST``: the host only, its time has no year).
    Another layout gives nothing rather than a guess."""
    toks = prefix.split()
    if toks and (pri := _PRI.match(toks[0])):
        toks[0] = toks[0][pri.end():]
        if toks[0] in ("", "1"):  # "<134>" alone, or RFC 5424's version
            toks = toks[1:]
    if toks and _ISO_START.match(toks[0]):
        return {"syslog.time": toks[0], **({"syslog.host": toks[1]} if len(toks) > 1 else {})}
    if len(toks) >= 4 and toks[0] in _MONTHS:
        return {"syslog.host": toks[3]}
    return {}


def cef_time(value: str) -> float:
    """A CEF time: epoch milliseconds, ``MMM dd yyyy HH:mm:ss[.SSS] [zone]``, or ISO 8601."""
    value = value.strip()
    if value.isdigit():
        return int(value) / 1000.0
    m = _CEF_TIME.match(value)
    if m:
        mon, day, year, hms, frac, zone = m.groups()
        t = datetime.strptime(f"{mon} {day} {year} {hms}", "%b %d %Y %H:%M:%S")
        return t.replace(tzinfo=_zone(zone)).timestamp() + (float(frac) if frac else 0.0)
    t = datetime.fromisoformat(value)
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def _zone(name: str | None):
    if name is None or name in ("UTC", "GMT", "Z"):
        return UTC
    m = re.fullmatch(r"([+-])(\d{2}):?(\d{2})", name)
    if m is None:
        raise ValueError(f"time zone {name!r} not understood (UTC, GMT, Z or +hh:mm; or rt in epoch milliseconds)")
    offset = timedelta(hours=int(m.group(2)), minutes=int(m.group(3)))
    return timezone(offset if m.group(1) == "+" else -offset)


class CefReader(JsonLinesReader):
    """CEF lines read as JSON records are (field sentences, entities), with CEF's defaults."""

    def __init__(self, data):
        super().__init__(data)
        self.message_fields = self.message_fields or list(DEFAULT_MESSAGE_FIELDS)
        self.entity_fields = self.entity_fields or dict(DEFAULT_ENTITY_FIELDS)
        self.time_keys = (data.fields["time"],) if "time" in data.fields else TIME_KEYS
        self.fields["time"] = "@time"  # the first of time_keys a record has, read by cef_time in parse_line
        self.parse_time, self._placed = float, None  # CEF's own times (cef_time), never data.time_format

    def parse_line(self, raw_bytes: bytes, source: str, line_no: int) -> Record | Rejection:
        text = check_line(raw_bytes, source, line_no, self.max_line_bytes)
        if isinstance(text, Rejection):
            return text
        record = parse_cef(text.rstrip("\r\n"))
        if isinstance(record, str):
            return Rejection(source, line_no, record)
        stamp = next((record[k] for k in self.time_keys if record.get(k)), None)
        if stamp is None:
            return Rejection(source, line_no, f"missing time: none of {list(self.time_keys)} in the event")
        try:
            record["@time"] = cef_time(stamp)
        except (ValueError, OverflowError) as e:
            why = str(e) if "zone" in str(e) else repr(stamp[:64])
            return Rejection(source, line_no, f"bad timestamp: {why}")
        return self.from_object(record, text.rstrip("\r\n"), source, line_no)
