"""Flow tables: CICFlowMeter CSV exports, generic NetFlow / IPFIX exports (CSV, Parquet, or JSON lines as
goflow2, ipfixcol2 or Filebeat write them) and AWS VPC flow logs (space-separated).

Columns are mapped onto canonical flow fields (loglm.ingest.flows) by a preset, overridable per field in
the data config (``fields: {canonical name: column}``, a dotted path into JSON objects); ``end`` names a
flow's end time, from which ``duration`` is taken where no duration column is mapped.  The CSV header row
counts as metadata; a file whose header lacks a required column has every row refused with that reason
(nothing is dropped silently).  A file whose first line is a JSON object is read as JSON lines, each line one
flow, fields looked up by name (a field left out is unset).  Rows without a timestamp column are numbered
in file order (``ts`` = row number, seconds), so windows and splits still follow the file's order.

VPC flow logs: the header line S3 delivery writes (``version account-id ...``, a custom format's fields in
its order) or, where a file starts with a record (CloudWatch exports), the default version-2 fields.
``NODATA`` records (no traffic in the interval) count as metadata; ``SKIPDATA`` ones (AWS dropped records
in the interval) are rejected with that reason, so the loss shows in the manifest.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from pathlib import Path

from loglm.ingest.flows import canonical_flow
from loglm.ingest.formats import time_parser
from loglm.ingest.json_lines import json_object, lookup, nested_value
from loglm.ingest.noyear import needs_year
from loglm.ingest.readers import (
    UNREADABLE,
    LineAccount,
    Record,
    Rejection,
    accept,
    check_line,
    read_lines,
    tally,
    unreadable,
)
from loglm.ingest.zeek import flow_entities

CICFLOWMETER_COLUMNS = {
    "ts": "Timestamp", "src_ip": "Source IP", "src_port": "Source Port", "dst_ip": "Destination IP",
    "dst_port": "Destination Port", "proto": "Protocol", "duration": "Flow Duration",
    "fwd_pkts": "Total Fwd Packets", "bwd_pkts": "Total Backward Packets",
    "fwd_bytes": "Total Length of Fwd Packets", "bwd_bytes": "Total Length of Bwd Packets", "label": "Label",
}
# generic NetFlow: the canonical names themselves, remapped per field by data.fields
NETFLOW_COLUMNS = {name: name for name in (
    "ts", "duration", "src_ip", "src_port", "dst_ip", "dst_port", "proto", "service", "state",
    "fwd_bytes", "bwd_bytes", "fwd_pkts", "bwd_pkts", "label")}
# AWS VPC flow logs: one direction per record, so bytes and packets are the forward ones; the action
# (ACCEPT / REJECT) is the flow's state
VPC_COLUMNS = {"ts": "start", "end": "end", "src_ip": "srcaddr", "src_port": "srcport", "dst_ip": "dstaddr",
               "dst_port": "dstport", "proto": "protocol", "fwd_bytes": "bytes", "fwd_pkts": "packets",
               "state": "action"}
VPC_DEFAULT_HEADER = ["version", "account-id", "interface-id", "srcaddr", "dstaddr", "srcport", "dstport", "protocol",
                      "packets", "bytes", "start", "end", "action", "log-status"]
PRESETS = {"cicflowmeter": (CICFLOWMETER_COLUMNS, ("duration", "fwd_pkts", "bwd_pkts", "fwd_bytes", "bwd_bytes")),
           "netflow": (NETFLOW_COLUMNS, ("src_ip", "dst_ip", "fwd_bytes", "fwd_pkts")),
           "vpcflow": (VPC_COLUMNS, ("src_ip", "dst_ip", "fwd_bytes", "fwd_pkts"))}
PROTO_NUMBERS = {"6": "tcp", "17": "udp", "1": "icmp", "58": "icmp6", "47": "gre"}


class FlowTableReader:
    def __init__(self, data):
        columns, required = PRESETS[data.format]
        self.columns = {**columns, **dict(data.fields)}
        self.required = required
        self.parse_time = time_parser(data.time_format)
        if needs_year(self.parse_time):
            raise ValueError(f"data.time_format={data.time_format!r}: flow records carry full times (epoch or a "
                             "format with its year); noyear: formats are for log lines (syslog)")
        self.duration_scale = 1e-6 if data.format == "cicflowmeter" else 1.0  # CICFlowMeter: microseconds
        self.vpc = data.format == "vpcflow"
        self.max_line_bytes = data.max_line_bytes

    def _time(self, stamp) -> float:
        return self.parse_time(str(stamp).strip())

    def _flow(self, row: dict, source: str, line_no: int, present: dict[str, str],
              raw: str | None = None) -> Record | Rejection:
        try:
            flow = canonical_flow(row, {k: c for k, c in present.items() if k not in ("ts", "end")})
        except ValueError as e:
            return Rejection(source, line_no, f"bad value: {e}")
        if "ts" in present:
            stamp = row.get(present["ts"])
            try:
                flow["ts"] = self._time(stamp)
            except (ValueError, OverflowError, TypeError):
                return Rejection(source, line_no, f"bad timestamp: {str(stamp)[:64]!r}")
        else:
            flow["ts"] = float(line_no)
        if flow.get("duration") is not None:
            flow["duration"] *= self.duration_scale
        elif "end" in present and row.get(present["end"]) not in (None, "", "-"):
            stamp = row[present["end"]]
            try:
                flow["duration"] = max(0.0, self._time(stamp) - flow["ts"])
            except (ValueError, OverflowError, TypeError):
                return Rejection(source, line_no, f"bad end time: {str(stamp)[:64]!r}")
        if flow.get("proto") in PROTO_NUMBERS:
            flow["proto"] = PROTO_NUMBERS[flow["proto"]]
        if raw is None:
            raw = ",".join("" if v is None else str(v) for v in row.values())
        return accept(Record(source, line_no, flow["ts"], "", raw, flow.get("label"), flow_entities(flow), flow))

    def _json_flow(self, text: str, source: str, line_no: int) -> Record | Rejection:
        """One JSON-lines flow: every mapped field looked up by name; one left out is unset."""
        obj = json_object(text, source, line_no)
        if isinstance(obj, Rejection):
            return obj
        row = {c: lookup(obj, c) for c in self.columns.values()}
        missing = [self.columns[k] for k in ("ts", *self.required) if row.get(self.columns[k]) is None]
        if missing:
            return Rejection(source, line_no, f"JSON flow lacks field(s) {missing}")
        nested = nested_value(row, source, line_no)
        if nested is not None:
            return nested
        present = {k: c for k, c in self.columns.items() if row[c] is not None}  # as a table's header would say
        return self._flow(row, source, line_no, present, raw=text)

    def _present(self, header: list[str]) -> tuple[dict[str, str], str | None]:
        names = {h.strip() for h in header}
        present = {k: c for k, c in self.columns.items() if c in names}
        missing = [self.columns[k] for k in self.required if k not in present]
        return present, (f"header lacks required column(s) {missing}" if missing else None)

    def read(self, path: Path, account: LineAccount) -> Iterator[Record | Rejection]:
        if path.suffix == ".parquet":
            return tally(self._parquet(path, account), account)
        self._header_of = None  # the first line of this file is its header
        return read_lines(self.parse_line, path, account, self.max_line_bytes)

    def parse_line(self, raw_bytes: bytes, source: str, line_no: int) -> Record | Rejection | None:
        """One row as a flow, a rejection, or None for the file's header row (and a VPC NODATA record)."""
        text = check_line(raw_bytes, source, line_no, self.max_line_bytes)
        if getattr(self, "_header_of", None) != source:
            if isinstance(text, Rejection):
                return text
            self._header_of = source
            self.mode = "json" if text.lstrip().startswith("{") else "vpc" if self.vpc else "csv"
            if self.mode == "json":
                return self._json_flow(text, source, line_no)
            if self.mode == "vpc":
                first = text.split()
                starts_with_record = bool(first) and first[0].isdigit()  # a version number: no header line
                self.header = VPC_DEFAULT_HEADER if starts_with_record else first
                self.present, self.problem = self._present(self.header)
                return self._row(first, text, source, line_no) if starts_with_record else None
            try:
                self.header = [h.strip() for h in next(csv.reader(io.StringIO(text)), [])]
            except csv.Error as e:  # every row of this file is then rejected with the reason
                self.header, self.present, self.problem = [], {}, f"malformed CSV header (line 1): {e}"
                return Rejection(source, line_no, self.problem)
            self.present, self.problem = self._present(self.header)
            return None
        if isinstance(text, Rejection):
            return text
        if self.mode == "json":
            return self._json_flow(text, source, line_no)
        if self.mode == "vpc":
            return self._row(text.split(), text, source, line_no)
        try:
            values = next(csv.reader(io.StringIO(text)))
        except csv.Error as e:
            return Rejection(source, line_no, f"malformed CSV: {e}")
        return self._row(values, None, source, line_no)

    def _row(self, values: list[str], text: str | None, source: str, line_no: int) -> Record | Rejection | None:
        if self.problem:
            return Rejection(source, line_no, self.problem)
        if len(values) != len(self.header):
            return Rejection(source, line_no, f"wrong column count: {len(values)} != {len(self.header)}")
        row = dict(zip(self.header, values))
        if self.mode == "vpc":
            status = row.get("log-status")
            if status == "NODATA":  # no traffic on the interface in the interval: not a flow
                return None
            if status == "SKIPDATA":
                return Rejection(source, line_no, "SKIPDATA: AWS skipped this interval's flow records")
        return self._flow(row, source, line_no, self.present, raw=text)

    def _parquet(self, path: Path, account: LineAccount) -> Iterator[Record | Rejection]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        source = os.fspath(path)
        row_no = 0
        try:
            pf = pq.ParquetFile(path)
            present, problem = self._present(pf.schema_arrow.names)
            for batch in pf.iter_batches(batch_size=65_536):
                for row in batch.to_pylist():
                    row_no += 1
                    account.read += 1
                    if problem:
                        yield Rejection(source, row_no, problem)
                        continue
                    yield self._flow(row, source, row_no, present)
        except (*UNREADABLE, pa.ArrowException) as e:  # a damaged Parquet file: rejected, the run goes on
            account.read += 1
            yield unreadable(source, row_no, e)
