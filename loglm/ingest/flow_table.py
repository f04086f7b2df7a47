"""Flow tables: CICFlowMeter CSV exports and generic NetFlow / IPFIX exports (CSV or Parquet).

Columns are mapped onto canonical flow fields (loglm.ingest.flows) by a preset, overridable per field in
the data config (``fields: {canonical name: column}``).  The CSV header row counts as metadata; a file
whose header lacks a required column has every row refused with that reason (nothing is dropped
silently).  Rows without a timestamp column are numbered in file order (``ts`` = row number, seconds), so
windows and splits still follow the file's order.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from pathlib import Path

from loglm.ingest.flows import canonical_flow
from loglm.ingest.formats import time_parser
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
PRESETS = {"cicflowmeter": (CICFLOWMETER_COLUMNS, ("duration", "fwd_pkts", "bwd_pkts", "fwd_bytes", "bwd_bytes")),
           "netflow": (NETFLOW_COLUMNS, ("src_ip", "dst_ip", "fwd_bytes", "fwd_pkts"))}
PROTO_NUMBERS = {"6": "tcp", "17": "udp", "1": "icmp", "58": "icmp6", "47": "gre"}


class FlowTableReader:
    def __init__(self, data):
        columns, required = PRESETS[data.format]
        self.columns = {**columns, **dict(data.fields)}
        self.required = required
        self.parse_time = time_parser(data.time_format)
        self.duration_scale = 1e-6 if data.format == "cicflowmeter" else 1.0  # CICFlowMeter: microseconds
        self.max_line_bytes = data.max_line_bytes

    def _flow(self, row: dict, source: str, line_no: int, present: dict[str, str]) -> Record | Rejection:
        try:
            flow = canonical_flow(row, {k: c for k, c in present.items() if k != "ts"})
        except ValueError as e:
            return Rejection(source, line_no, f"bad value: {e}")
        if "ts" in present:
            stamp = row.get(present["ts"])
            try:
                flow["ts"] = self.parse_time(str(stamp).strip())
            except (ValueError, OverflowError, TypeError):
                return Rejection(source, line_no, f"bad timestamp: {str(stamp)[:64]!r}")
        else:
            flow["ts"] = float(line_no)
        if flow.get("duration") is not None:
            flow["duration"] *= self.duration_scale
        if flow.get("proto") in PROTO_NUMBERS:
            flow["proto"] = PROTO_NUMBERS[flow["proto"]]
        raw = ",".join("" if v is None else str(v) for v in row.values())
        return accept(Record(source, line_no, flow["ts"], "", raw, flow.get("label"), flow_entities(flow), flow))

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
        """One CSV row as a flow, a rejection, or None for the file's header row."""
        text = check_line(raw_bytes, source, line_no, self.max_line_bytes)
        if getattr(self, "_header_of", None) != source:
            if isinstance(text, Rejection):
                return text
            self._header_of = source
            try:
                self.header = [h.strip() for h in next(csv.reader(io.StringIO(text)), [])]
            except csv.Error as e:  # every row of this file is then rejected with the reason
                self.header, self.present, self.problem = [], {}, f"malformed CSV header (line 1): {e}"
                return Rejection(source, line_no, self.problem)
            self.present, self.problem = self._present(self.header)
            return None
        if isinstance(text, Rejection):
            return text
        if self.problem:
            return Rejection(source, line_no, self.problem)
        try:
            values = next(csv.reader(io.StringIO(text)))
        except csv.Error as e:
            return Rejection(source, line_no, f"malformed CSV: {e}")
        if len(values) != len(self.header):
            return Rejection(source, line_no, f"wrong column count: {len(values)} != {len(self.header)}")
        return self._flow(dict(zip(self.header, values)), source, line_no, self.present)

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
