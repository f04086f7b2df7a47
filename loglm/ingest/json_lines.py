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
from collections.abc import Iterator
from pathlib import Path

from loglm.ingest.formats import time_parser
from loglm.ingest.readers import LineAccount, Record, Rejection, accept, check_line, read_lines
from loglm.ingest.templates import FIELD_SENTENCE_START

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


class JsonLinesReader:
    def __init__(self, data):
        self.fields = {**DEFAULT_FIELDS, **dict(data.fields)}
        self.entity_fields = dict(data.entity_fields)
        self.parse_time = time_parser(data.time_format)
        self.max_line_bytes = data.max_line_bytes
        self.message_fields = list(getattr(data, "message_fields", []) or [])

    def read(self, path: Path, account: LineAccount) -> Iterator[Record | Rejection]:
        return read_lines(self.parse_line, path, account, self.max_line_bytes)

    def parse_line(self, raw_bytes: bytes, source: str, line_no: int) -> Record | Rejection:
        text = check_line(raw_bytes, source, line_no, self.max_line_bytes)
        if isinstance(text, Rejection):
            return text
        obj = json_object(text, source, line_no)
        if isinstance(obj, Rejection):
            return obj
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
        return accept(Record(source, line_no, ts, str(message), text, None if label is None else str(label), ents,
                             exact=bool(self.message_fields)))
