"""Readers turn raw inputs into accepted records or rejections; every line is one or the other."""

from __future__ import annotations

import functools
import gzip
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from loglm.ingest.formats import LogFormat


@dataclass(slots=True)
class Record:
    source: str
    line_no: int  # 1-based, within source
    ts: float
    content: str
    raw: str
    label: str | None = None
    header_entities: dict[str, str] = field(default_factory=dict)


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
    reasons: Counter = field(default_factory=Counter)

    def reject(self, reason: str) -> None:
        self.rejected += 1
        self.reasons[reason.split(":")[0]] += 1

    def as_dict(self) -> dict:
        return {"read": self.read, "accepted": self.accepted, "rejected": self.rejected,
                "rejected_by_reason": dict(self.reasons)}


def expand_inputs(inputs: Iterable[str]) -> list[Path]:
    """Files as given, directories expanded to their files in name order; a missing path is an error."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            paths.extend(sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith(".")))
        elif p.is_file():
            paths.append(p)
        else:
            raise FileNotFoundError(f"input not found: {item}")
    if not paths:
        raise FileNotFoundError(f"no input files in {list(inputs)}")
    return paths


def open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


class RawTextReader:
    """Lines with a loghub-style header (``<Date> <Time> ... <Content>``)."""

    def __init__(self, fmt: LogFormat, max_line_bytes: int = 65_536):
        self.fmt = fmt
        self.regex = fmt.regex()
        self.max_line_bytes = max_line_bytes
        # log timestamps repeat heavily (second resolution): parse each distinct stamp once
        self._parse_time = functools.lru_cache(maxsize=1 << 16)(fmt.time_parser)

    def read(self, path: Path, account: LineAccount) -> Iterator[Record | Rejection]:
        source = os.fspath(path)
        with open_binary(path) as fh:
            for line_no, raw_bytes in enumerate(fh, start=1):
                account.read += 1
                item = self.parse_line(raw_bytes, source, line_no)
                if isinstance(item, Rejection):
                    account.reject(item.reason)
                else:
                    account.accepted += 1
                yield item

    def parse_line(self, raw_bytes: bytes, source: str, line_no: int) -> Record | Rejection:
        if len(raw_bytes) > self.max_line_bytes:
            return Rejection(source, line_no, f"line too long: {len(raw_bytes)} bytes > {self.max_line_bytes}")
        try:
            text = raw_bytes.decode("utf-8")
        except UnicodeDecodeError as e:
            return Rejection(source, line_no, f"undecodable bytes: {e.reason} at byte {e.start}")
        text = text.rstrip("\r\n")
        if not text.strip():
            return Rejection(source, line_no, "empty line")
        if "\x00" in text:
            return Rejection(source, line_no, "NUL byte in line")
        m = self.regex.match(text)
        if m is None:
            return Rejection(source, line_no, f"header does not match format {self.fmt.name}")
        fields = m.groupdict()
        stamp = " ".join(fields[f] for f in self.fmt.time_fields)
        try:
            ts = self._parse_time(stamp)
        except (ValueError, OverflowError):
            return Rejection(source, line_no, f"bad timestamp: {stamp[:64]!r}")
        label = fields.get(self.fmt.label_field) if self.fmt.label_field else None
        ents = {kind: fields[name] for name, kind in self.fmt.entity_fields if fields.get(name)}
        return Record(source, line_no, ts, fields["Content"], text, label, ents)
