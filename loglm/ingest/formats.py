"""Header formats of raw log lines (loghub ``log_format`` notation) and their timestamp parsers."""

from __future__ import annotations

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

    def regex(self) -> re.Pattern[str]:
        return header_regex(self.header)


def header_regex(header: str) -> re.Pattern[str]:
    """Compile loghub notation into a regex with one named group per ``<Field>``."""
    parts = re.split(r"(<[^<>]+>)", header)
    out = []
    for part in parts:
        if not part:
            continue
        if part.startswith("<") and part.endswith(">"):
            name = part[1:-1]
            out.append(f"(?P<{name}>.*?)" if name != "Content" else f"(?P<{name}>.*)")
        else:
            out.append(r"\s+".join(re.escape(piece) for piece in re.split(r" +", part)))
    return re.compile("^" + "".join(out) + "$")


def _strptime(fmt: str) -> Callable[[str], float]:
    def parse(value: str) -> float:
        return datetime.strptime(value, fmt).replace(tzinfo=UTC).timestamp()

    parse.__name__ = f"strptime_{fmt}"
    return parse


def _epoch(value: str) -> float:
    return float(value)


PRESETS: dict[str, LogFormat] = {
    "hdfs": LogFormat(
        name="hdfs",
        header="<Date> <Time> <Pid> <Level> <Component>: <Content>",
        time_fields=("Date", "Time"),
        time_parser=_strptime("%y%m%d %H%M%S"),
    ),
    "bgl": LogFormat(
        name="bgl",
        header="<Label> <Timestamp> <Date> <Node> <Time> <NodeRepeat> <Type> <Component> <Level> <Content>",
        time_fields=("Time",),
        time_parser=_strptime("%Y-%m-%d-%H.%M.%S.%f"),
        label_field="Label",
        entity_fields=(("Node", "hostname"),),
    ),
}


def get_format(name: str) -> LogFormat:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown log format {name!r}; known presets: {sorted(PRESETS)}") from None
