"""Zeek ``conn.log`` (TSV with ``#fields`` header), including the ``.labeled`` variants (label columns).

Metadata lines (``#separator``, ``#fields``, ``#types``, ``#close`` ...) are counted as metadata; each
data row becomes one flow record with canonical fields (loglm.ingest.flows), its source and destination
addresses as ``ip`` entities and ``src_ip``/``dst_ip`` entities for sessions per host.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from loglm.ingest.flows import canonical_flow
from loglm.ingest.readers import LineAccount, Record, Rejection, accept, check_line, read_lines

ZEEK_COLUMNS = {
    "ts": "ts", "src_ip": "id.orig_h", "src_port": "id.orig_p", "dst_ip": "id.resp_h", "dst_port": "id.resp_p",
    "proto": "proto", "service": "service", "duration": "duration", "fwd_bytes": "orig_bytes",
    "bwd_bytes": "resp_bytes", "state": "conn_state", "fwd_pkts": "orig_pkts", "bwd_pkts": "resp_pkts",
    "local_orig": "local_orig", "local_resp": "local_resp", "label": "label",
}
REQUIRED = ("ts", "id.orig_h", "id.resp_h", "proto")


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
        self._source: str | None = None

    def _reset(self, source: str) -> None:
        self._source, self.sep, self.unset, self.names = source, "\t", "-", None
        self.no_header = "data row before a #fields header"

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
            elif key == "#fields":
                self.names = value.split(self.sep)
                missing = [c for c in REQUIRED if c not in self.names]
                if missing:  # every row under it is refused with this reason
                    self.names = None
                    self.no_header = f"Zeek #fields header (line {line_no}) lacks {missing}: not a conn.log"
            return None
        text = check_line(raw_bytes, source, line_no, self.max_line_bytes)
        if isinstance(text, Rejection):
            return text
        if self.names is None:
            return Rejection(source, line_no, self.no_header)
        values = text.split(self.sep)
        if len(values) != len(self.names):
            return Rejection(source, line_no, f"wrong column count: {len(values)} != {len(self.names)}")
        row = {n: (None if v == self.unset else v) for n, v in zip(self.names, values)}
        try:
            flow = canonical_flow(row, {k: c for k, c in self.columns.items() if c in row})
        except ValueError as e:
            return Rejection(source, line_no, f"bad value: {e}")
        if flow.get("ts") is None:
            return Rejection(source, line_no, "bad timestamp: missing ts")
        return accept(Record(source, line_no, flow["ts"], "", text, flow.get("label"), flow_entities(flow), flow))
