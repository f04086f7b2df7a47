"""Zeek logs.  ``conn.log``: TSV with a ``#fields`` header, including the ``.labeled`` variants (label columns), or
Zeek's JSON logs (``LogAscii::use_json=T``, the default of Corelight sensors and Security Onion).

TSV: metadata lines (``#separator``, ``#fields``, ``#types``, ``#close`` ...) are counted as metadata; each
data row becomes one flow record with canonical fields (loglm.ingest.flows), its source and destination
addresses as ``ip`` entities and ``src_ip``/``dst_ip`` entities for sessions per host.

JSON: a line that starts with ``{`` is one conn record, read by the same column names (``id.orig_h`` as a
flat key, or nested ``{"id": {"orig_h": ..}}`` as a shipper may rewrite it; ``data.fields`` maps others,
e.g. ECS's ``source.ip``); a field left out is unset, as ``-`` is in TSV.  ``ts`` is epoch seconds, epoch
milliseconds (``JSON::TS_MILLIS``: a number above 10^11) or ISO 8601 (``JSON::TS_ISO8601``).  No header is
needed, so TSV and JSON files can be read side by side.

Any other Zeek log (``dns.log``, ``http.log``, ``ssl.log``, ``notice.log`` ...), TSV or JSON, is read as
*events* with ``data.message_fields``: each row becomes the field sentence of the fields named
(``fields: qtype_name=A rcode_name=NXDOMAIN``, loglm.ingest.json_lines), values exact, with the connection's
addresses as ``src_ip``/``dst_ip``/``pair`` entities; only ``ts`` and ``id.orig_h`` are required.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

from loglm.ingest.flows import canonical_flow
from loglm.ingest.formats import time_parser
from loglm.ingest.json_lines import field_sentence, json_object, lookup, nested_value
from loglm.ingest.readers import LineAccount, Record, Rejection, accept, check_line, read_lines

ZEEK_COLUMNS = {
    "ts": "ts", "src_ip": "id.orig_h", "src_port": "id.orig_p", "dst_ip": "id.resp_h", "dst_port": "id.resp_p",
    "proto": "proto", "service": "service", "duration": "duration", "fwd_bytes": "orig_bytes",
    "bwd_bytes": "resp_bytes", "state": "conn_state", "fwd_pkts": "orig_pkts", "bwd_pkts": "resp_pkts",
    "local_orig": "local_orig", "local_resp": "local_resp", "label": "label",
}
REQUIRED = ("ts", "id.orig_h", "id.resp_h", "proto")
REQUIRED_EVENTS = ("ts", "id.orig_h")  # any Zeek log read as events (data.message_fields)
MILLIS_ABOVE = 1e11  # epoch seconds this large are the year 5138: a number above it is milliseconds
_iso = time_parser("iso")


def json_ts(value) -> float:
    """A Zeek JSON ``ts``: epoch seconds, epoch milliseconds or an ISO 8601 string."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError
    try:
        ts = float(value)
    except ValueError:
        ts = _iso(value.strip())
    if not math.isfinite(ts):
        raise ValueError
    return ts / 1000.0 if ts > MILLIS_ABOVE else ts


def flow_entities(flow: dict) -> dict[str, str]:
    ents = {}
    if flow.get("src_ip"):
        ents["src_ip"] = flow["src_ip"]
    if flow.get("dst_ip"):
        ents["dst_ip"] = flow["dst_ip"]
    if flow.get("src_ip") and flow.get("dst_ip"):
        ents["pair"] = f"{flow['src_ip']}>{flow['dst_ip']}"  # sessions per src-dst pair
    return ents


class ZeekConnReader:
    """Stateful per file: ``#separator``/``#unset_field``/``#fields`` lines set how later rows are read."""

    def __init__(self, data):
        self.columns = {**ZEEK_COLUMNS, **dict(data.fields)}
        self.max_line_bytes = data.max_line_bytes
        self.message_fields = list(data.message_fields)  # set: rows are events (any Zeek log), not flows
        self._source: str | None = None

    def _reset(self, source: str) -> None:
        self._source, self.sep, self.unset, self.names, self.path = source, "\t", "-", None, None
        self.no_header = "data row before a #fields header (and not a JSON object)"

    def read(self, path: Path, account: LineAccount) -> Iterator[Record | Rejection]:
        self._reset(os.fspath(path))
        return read_lines(self.parse_line, path, account, self.max_line_bytes)

    def parse_line(self, raw_bytes: bytes, source: str, line_no: int) -> Record | Rejection | None:
        """One flow, a rejection, or None for a metadata line (which may change how rows are read)."""
        if source != self._source:
            self._reset(source)
        if raw_bytes.startswith(b"#"):
            text = raw_bytes.decode("utf-8", "replace").rstrip("\r\n")
            key, _, value = text.partition(" " if text.startswith("#separator") else self.sep)
            if key == "#separator":
                self.sep = value.strip().encode().decode("unicode_escape") or "\t"
            elif key == "#unset_field":
                self.unset = value
            elif key == "#path":
                self.path = value
            elif key == "#fields":
                self.names = value.split(self.sep)
                missing = [c for c in (REQUIRED_EVENTS if self.message_fields else REQUIRED) if c not in self.names]
                if not self.message_fields and self.path not in (None, "conn"):  # dns.log has conn's columns too
                    missing = [f"#path conn (this is {self.path})"]
                if missing:  # every row under it is refused with this reason
                    self.names = None
                    self.no_header = (f"Zeek #fields header (line {line_no}) lacks {missing}: "
                                      + ("not a Zeek log" if self.message_fields else
                                         "not a conn.log (other Zeek logs are read as events with data.message_fields)"))
            return None
        text = check_line(raw_bytes, source, line_no, self.max_line_bytes)
        if isinstance(text, Rejection):
            return text
        if text.lstrip().startswith("{"):
            return self.parse_json(text, source, line_no)
        if self.names is None:
            return Rejection(source, line_no, self.no_header)
        values = text.split(self.sep)
        if len(values) != len(self.names):
            return Rejection(source, line_no, f"wrong column count: {len(values)} != {len(self.names)}")
        row = {n: (None if v == self.unset else v) for n, v in zip(self.names, values)}
        if self.message_fields:
            return self._event(row, text, source, line_no)
        try:
            flow = canonical_flow(row, {k: c for k, c in self.columns.items() if c in row})
        except ValueError as e:
            return Rejection(source, line_no, f"bad value: {e}")
        if flow.get("ts") is None:
            return Rejection(source, line_no, "bad timestamp: missing ts")
        return accept(Record(source, line_no, flow["ts"], "", text, flow.get("label"), flow_entities(flow), flow))

    def parse_json(self, text: str, source: str, line_no: int) -> Record | Rejection:
        """One Zeek JSON conn record: the TSV row's columns looked up by name, unset where left out."""
        obj = json_object(text, source, line_no)
        if isinstance(obj, Rejection):
            return obj
        if self.message_fields:
            return self._event({c: lookup(obj, c) for c in {*self.message_fields, *self.columns.values()}},
                               text, source, line_no)
        row = {c: lookup(obj, c) for c in self.columns.values()}
        missing = [c for c in (self.columns["ts"], self.columns["src_ip"], self.columns["dst_ip"],
                               self.columns["proto"]) if row.get(c) is None]
        if missing:
            return Rejection(source, line_no, f"Zeek JSON record lacks {missing}: not a conn.log record")
        nested = nested_value(row, source, line_no)
        if nested is not None:
            return nested
        stamp = row[self.columns["ts"]]
        try:
            row[self.columns["ts"]] = json_ts(stamp)
        except (ValueError, OverflowError):
            return Rejection(source, line_no, f"bad timestamp: {str(stamp)[:64]!r}")
        try:
            flow = canonical_flow(row, self.columns)
        except ValueError as e:
            return Rejection(source, line_no, f"bad value: {e}")
        return accept(Record(source, line_no, flow["ts"], "", text, flow.get("label"), flow_entities(flow), flow))

    def _event(self, row: dict, text: str, source: str, line_no: int) -> Record | Rejection:
        """A row of any Zeek log as an event: the field sentence of data.message_fields, exact."""
        missing = [c for c in REQUIRED_EVENTS if row.get(c) is None]
        if missing:
            return Rejection(source, line_no, f"Zeek record lacks {missing}")
        try:
            ts = json_ts(row["ts"])
        except (ValueError, OverflowError):
            return Rejection(source, line_no, f"bad timestamp: {str(row['ts'])[:64]!r}")
        ents = flow_entities({"src_ip": row.get("id.orig_h"), "dst_ip": row.get("id.resp_h")})
        label = row.get(self.columns["label"])
        return accept(Record(source, line_no, ts, field_sentence(row, self.message_fields), text,
                             None if label is None else str(label), ents, exact=True))
