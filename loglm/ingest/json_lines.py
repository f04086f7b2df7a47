"""JSON lines: one object per line (security events, application logs shipped as JSON).

Field names are dotted paths into nested objects, set in the data config::

    format: jsonl
    fields: {message: event.message, time: "@timestamp", label: label}
    time_format: iso                      # epoch | epoch_ms | iso | a strptime format
    entity_fields: {source.ip: ip, user.name: user, host.name: hostname}

The message text goes through the same masking and template mining as raw log lines; entity fields are
attached to the event (and can key its sessions).

Security events carry their meaning in fields, not in a sentence (a Windows logon's event code, logon type
and outcome; a cloud API call's name and error code).  ``message_fields`` builds each event from those::

    message_fields: [event.code, winlog.logon.type, event.outcome]

into a *field sentence*, ``fields: event.code=4625 winlog.logon.type=Network event.outcome=failure``: values
kept exactly as they are (not masked: ``4625`` is the event, not a number), a field left out written ``-``,
and each combination its own template, never generalised with another (as flow sentences are).  Users,
hosts and addresses belong in ``entity_fields``, not here: a field sentence is vocabulary.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

from loglm.ingest.formats import time_parser
from loglm.ingest.noyear import PlacedTimes, needs_year
from loglm.ingest.readers import (
    UNREADABLE,
    LineAccount,
    Record,
    Rejection,
    accept,
    check_line,
    open_binary,
    read_lines,
    tally,
    unreadable,
)
from loglm.ingest.templates import FIELD_SENTENCE_START, namespace_of

DEFAULT_FIELDS = {"message": "message", "time": "timestamp"}
MAX_FIELD_VALUE = 64  # characters of one value in a field sentence (a longer one is cut, marked with "~")


def field_value(value) -> str:
    """One value of a field sentence as one token: whitespace joined by ``_``, objects as compact JSON."""
    if value is None:
        return "-"
    text = json.dumps(value, separators=(",", ":"), sort_keys=True) if isinstance(value, dict | list) else str(value)
    text = "_".join(text.split()) or "-"
    return text if len(text) <= MAX_FIELD_VALUE else text[:MAX_FIELD_VALUE] + "~"


def field_sentence(obj: dict, names: list[str]) -> str:
    return " ".join([FIELD_SENTENCE_START] + [f"{n}={field_value(lookup(obj, n))}" for n in names])


def lookup(obj, path: str):
    """Value at a dotted path (``a.b.c``); a key that itself contains dots is tried whole first."""
    if isinstance(obj, dict) and path in obj:
        return obj[path]
    cur = obj
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def json_object(text: str, source: str, line_no: int) -> dict | Rejection:
    """One line as a JSON object, or the rejection that says why it is not one."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return Rejection(source, line_no, f"invalid JSON: {e.msg} at column {e.colno}")
    except RecursionError:
        return Rejection(source, line_no, "invalid JSON: nested too deeply")
    if not isinstance(obj, dict):
        return Rejection(source, line_no, f"not a JSON object: {type(obj).__name__}")
    return obj


MAX_DOCUMENT_BYTES = 256 << 20  # a {"Records": [...]} document is read whole (CloudTrail's files: a few MB)


def records_document(path: Path) -> bool:
    """Whether a file is one ``{"Records": [...]}`` JSON document (AWS CloudTrail as delivered to S3, plain or
    gzipped) rather than JSON lines."""
    try:
        with open_binary(Path(path)) as fh:
            head = fh.read(256).lstrip()
    except (*UNREADABLE, IsADirectoryError):
        return False
    return head.startswith(b"{") and head[1:].lstrip().startswith(b'"Records"')


def nested_value(row: dict, source: str, line_no: int) -> Rejection | None:
    """The rejection of a row of looked-up fields (flows: each a number or a string) holding an object or a
    list; None when every value is flat."""
    nested = next((c for c, v in row.items() if isinstance(v, dict | list)), None)
    if nested is None:
        return None
    return Rejection(source, line_no, f"bad value: field {nested!r} is a JSON {type(row[nested]).__name__}")


class JsonLinesReader:
    def __init__(self, data, path: Path | None = None):
        self.fields = {**DEFAULT_FIELDS, **dict(data.fields)}
        self.entity_fields = dict(data.entity_fields)
        self.parse_time = time_parser(data.time_format)
        self._placed = None
        if needs_year(self.parse_time):  # "noyear:" stamps placed in their year from the input's last record
            self._placed = self.parse_time = PlacedTimes(self.parse_time, data.year_reference, path, self._stamp2000)
        self.max_line_bytes = data.max_line_bytes
        self.message_fields = list(getattr(data, "message_fields", []) or [])
        # the fields naming the program that wrote a record (journald's SYSLOG_IDENTIFIER, ECS's process.name):
        # its events' namespace, as the syslog presets' tag (loglm.ingest.templates)
        self.event_fields = list(getattr(data, "event_fields", None) or [])

    def _stamp2000(self, text: str) -> float | None:
        """A JSON line's time read in year 2000 (``noyear:`` formats), or None where it has none."""
        try:
            obj = json.loads(text)
            return self._placed.parse(str(lookup(obj, self.fields["time"]))) if isinstance(obj, dict) else None
        except (ValueError, OverflowError, RecursionError):
            return None

    def read(self, path: Path, account: LineAccount) -> Iterator[Record | Rejection]:
        if self._placed is not None and self._placed.path != path:  # another file: its own last record
            self._placed.for_input(path)
        if records_document(path):
            return tally(self._document(path, account), account)
        return read_lines(self.parse_line, path, account, self.max_line_bytes)

    def _document(self, path: Path, account: LineAccount) -> Iterator[Record | Rejection]:
        """The records of one ``{"Records": [...]}`` document (AWS CloudTrail's S3 files), each accounted as a
        line numbered by its place in the list.  The document is read whole: one file, at most
        MAX_DOCUMENT_BYTES, never the corpus."""
        source = os.fspath(path)
        try:
            with open_binary(path) as fh:
                body = fh.read(MAX_DOCUMENT_BYTES + 1)
        except UNREADABLE as e:
            account.read += 1
            yield unreadable(source, 0, e)
            return
        if len(body) > MAX_DOCUMENT_BYTES:
            account.read += 1
            yield Rejection(source, 1, f"JSON document larger than {MAX_DOCUMENT_BYTES} bytes: not read (split it "
                                       "into JSON lines, e.g. jq -c '.Records[]')")
            return
        doc = json_object(body.decode("utf-8", "replace"), source, 1)
        records = doc.get("Records") if isinstance(doc, dict) else None
        if not isinstance(records, list):
            account.read += 1
            yield doc if isinstance(doc, Rejection) else Rejection(source, 1, "JSON document without a Records list")
            return
        del body, doc
        for n, rec in enumerate(records, 1):
            account.read += 1
            if not isinstance(rec, dict):
                yield Rejection(source, n, f"not a JSON object: {type(rec).__name__}")
                continue
            yield self.from_object(rec, json.dumps(rec, separators=(",", ":")), source, n)

    def parse_line(self, raw_bytes: bytes, source: str, line_no: int) -> Record | Rejection:
        text = check_line(raw_bytes, source, line_no, self.max_line_bytes)
        if isinstance(text, Rejection):
            return text
        obj = json_object(text, source, line_no)
        if isinstance(obj, Rejection):
            return obj
        return self.from_object(obj, text, source, line_no)

    def from_object(self, obj: dict, text: str, source: str, line_no: int) -> Record | Rejection:
        """One JSON object (a line's, or a record of a ``{"Records": [...]}`` document) as an event."""
        if self.message_fields:
            message = field_sentence(obj, self.message_fields)
            if all(lookup(obj, n) is None for n in self.message_fields):
                return Rejection(source, line_no, f"none of the message fields {self.message_fields} in the record")
        else:
            message = lookup(obj, self.fields["message"])
            if message is None or isinstance(message, dict | list):
                return Rejection(source, line_no, f"missing field {self.fields['message']!r} (message)")
        stamp = lookup(obj, self.fields["time"])
        if stamp is None:
            return Rejection(source, line_no, f"missing field {self.fields['time']!r} (time)")
        try:
            ts = self.parse_time(str(stamp))
            if not math.isfinite(ts):
                raise ValueError
        except (ValueError, OverflowError, TypeError):
            return Rejection(source, line_no, f"bad timestamp: {str(stamp)[:64]!r}")
        ents = {}
        for fpath, kind in self.entity_fields.items():
            value = lookup(obj, fpath)
            if value is not None and not isinstance(value, dict | list) and str(value):
                ents[kind] = str(value)
        label = lookup(obj, self.fields["label"]) if "label" in self.fields else None
        namespace = None
        if self.event_fields:
            values = [lookup(obj, f) for f in self.event_fields]
            namespace = namespace_of([str(v) for v in values if v is not None and not isinstance(v, dict | list)])
        return accept(Record(source, line_no, ts, str(message), text, None if label is None else str(label), ents,
                             exact=bool(self.message_fields), namespace=namespace))
