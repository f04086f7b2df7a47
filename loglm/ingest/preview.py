"""``python -m pipelines.prepare ... preview=N``: the first N lines of each input as prepare would read them,
before a long prepare of your own logs.  For each line: accepted (its time, entities, the session it joins and
the event text the vocabulary is built from: masked message, field sentence or flow fields) or rejected (the
reason); then per file how many lines were read, accepted, rejected by reason, and what to fix when nothing
fits.  Reads only the lines shown; writes nothing.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from itertools import islice

from loglm.ingest.prepare import event_parts
from loglm.ingest.readers import LineAccount, Record, expand_inputs, make_reader
from loglm.ingest.sessions import session_keys
from loglm.ingest.templates import shown

# data.format values read by a sequence builder, not line by line: nothing to preview per line
BUILT = ("hdfs_keys", "hdfs_blocks", "id_sequences")


def _time(ts: float) -> str:
    try:
        return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
    except (ValueError, OverflowError, OSError):
        return f"{ts!r} (not a date)"


def _event(item: Record) -> str:
    if item.fields is not None:  # a flow: its sentence needs the codec fitted on training flows; its fields
        keep = {k: v for k, v in item.fields.items() if v is not None and k not in ("ts", "label", "src_ip", "dst_ip")}
        return "flow " + " ".join(f"{k}={v}" for k, v in keep.items())
    masked, _ = event_parts(item)
    return shown(masked)  # "sshd: Accepted ..." for a line whose program is part of its event


def preview(cfg, n: int, out=None) -> dict:
    """Print the first ``n`` lines of each input as prepare reads them; returns the per-file tallies."""
    out = out or sys.stdout
    data = cfg.data
    if data.format in BUILT:
        raise ValueError(f"preview reads log lines; data.format={data.format} is read by a sequence builder")
    if not data.inputs:
        raise ValueError("preview needs data.inputs")
    if n < 1:
        raise ValueError(f"preview=N shows the first N lines of each input; got {n}")
    files = {}
    for path in expand_inputs(data.inputs):
        account, sessions, events, no_session = LineAccount(), set(), set(), 0
        print(f"== {path} ({data.format})", file=out)
        for item in islice(make_reader(data, path).read(path, account), n):
            if not isinstance(item, Record):
                print(f"  line {item.line_no}: REJECTED {item.reason}", file=out)
                continue
            _, ents = event_parts(item)
            keys = session_keys(ents, item.ts, data.session) if data.session.by not in ("event", "count") else \
                [f"({data.session.by})"]
            text = _event(item)
            sessions.update(keys)
            events.add(text)
            shown = {k: v for k, v in ents.items() if v}
            print(f"  line {item.line_no}: {_time(item.ts)} session={keys[0] if keys else 'NONE'}"
                  f"{' label=' + item.label if item.label is not None else ''}\n"
                  f"    event: {text}\n    entities: {json.dumps(shown, sort_keys=True)}", file=out)
            no_session += not keys  # prepare rejects these: no session to put them in
        tally = {**account.as_dict(), "without_session": no_session, "sessions": len(sessions),
                 "distinct_events": len(events)}
        files[str(path)] = tally
        print(f"  -- {json.dumps(tally)}", file=out)
        for hint in hints(data, tally):
            print(f"  hint: {hint}", file=out)
    return {"preview": n, "format": data.format, "files": files}


def hints(data, tally: dict) -> list[str]:
    """What to change when the lines shown do not fit (every line rejected, or no session to put them in)."""
    out = []
    shown = tally["accepted"] + tally["rejected"]
    if shown and not tally["accepted"]:
        out.append(f"no line fits data.format={data.format}: check the format (a preset, or data.header with "
                   "data.time_fields and data.time_format), or the reasons above")
    if tally["accepted"] and tally["without_session"] == tally["accepted"]:
        out.append(f"no line names a {data.session.entity_type} entity: map one with data.entity_fields (or "
                   "data.session.entity_type), or sessionize by time with data.session.by=window")
    if tally["accepted"] > 10 and tally["distinct_events"] == tally["accepted"]:
        out.append("every line is a different event: a parameter may be left unmasked in the message, or "
                   "data.message_fields names a field with a value per line (an id, a time)")
    return out
