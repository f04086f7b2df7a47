"""What carrying the program in each event (``data.event_fields``) changes in the templates of the loghub 2k
sets whose header names it: templates with and without it, and the content templates it splits by program.

    python -m benchmarks.program_events [--data ../shared/data/loghub_2k]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SETS = (("Linux", "linux"), ("Mac", "mac"), ("Thunderbird", "thunderbird"))


def mined(path: Path, fmt: str, event_fields: list[str]) -> tuple:
    """(miner, line number -> template id) of one file read with ``event_fields``."""
    from loglm.config import DataConfig
    from loglm.ingest.formats import format_of
    from loglm.ingest.prepare import event_parts
    from loglm.ingest.raw_text import RawTextReader
    from loglm.ingest.readers import Record
    from loglm.ingest.templates import TemplateMiner

    reader = RawTextReader(format_of(DataConfig(format=fmt, event_fields=event_fields)), year_reference="2024")
    miner, ids = TemplateMiner(), {}
    with open(path, "rb") as fh:
        for i, raw in enumerate(fh, 1):
            rec = reader.parse_line(raw, str(path), i)
            if isinstance(rec, Record):
                ids[i] = miner.add(event_parts(rec)[0])
    return miner, ids


def compare(path: Path, fmt: str) -> dict:
    alone, by_line = mined(path, fmt, [])
    ns, ns_by_line = mined(path, fmt, ["Component"])
    split: dict[int, set[int]] = {}
    for line, tid in by_line.items():
        split.setdefault(tid, set()).add(ns_by_line[line])
    return {"lines": len(by_line), "templates_content_alone": len(alone.templates),
            "templates_with_program": len(ns.templates),
            "split_by_program": {alone.templates[a].text: sorted({ns.templates[x].text.split(": ")[0] for x in b})
                                 for a, b in split.items() if len(b) > 1}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "loghub_2k"))
    args = ap.parse_args()
    out = {system: compare(Path(args.data) / system / f"{system}_2k.log", fmt) for system, fmt in SETS}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
