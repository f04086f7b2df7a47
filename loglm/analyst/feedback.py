"""The analysts' verdicts on alerts: an append-only JSON-lines table (one row per verdict, newest wins).

Rows: time, alert_id, session_id, entity, verdict (benign | malicious), kind (optional: "SSH brute force"),
note, analyst, the alerts file and model the alert came from, and for a verdict given to an alert group
(loglm.analyst.groups) the group's leading alert.  Appends take a file lock, so the triage page
and `loglm feedback` can write at once.  Tuning (loglm.analyst.tune) reads benign verdicts as normal data;
`loglm kinds fit` reads malicious verdicts with a kind as few-shot examples.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import time
from pathlib import Path

VERDICTS = ("benign", "malicious")


def record(path: str | Path, alert: dict, verdict: str, kind: str | None = None, note: str = "",
           analyst: str | None = None, alerts_file: str | None = None) -> dict:
    return record_many(path, [alert], verdict, kind, note, analyst, alerts_file)[0]


def record_many(path: str | Path, alerts: list[dict], verdict: str, kind: str | None = None, note: str = "",
                analyst: str | None = None, alerts_file: str | None = None, group: str | None = None) -> list[dict]:
    """One verdict for several alerts (an alert group: ``group`` its leader's alert_id, kept on each row),
    appended in one locked write."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
    now, who = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), analyst or getpass.getuser()
    rows = [{"time": now, "alert_id": a["alert_id"], "session_id": a["session_id"], "entity": a.get("entity"),
             "verdict": verdict, "kind": kind or None, "note": note[:2000], "analyst": who,
             "alerts_file": alerts_file, "model": a.get("model"), **({"group": group} if group else {})}
            for a in alerts]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            fh.write("".join(json.dumps(row) + "\n" for row in rows))
            fh.flush()
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    return rows


def read(path: str | Path) -> dict[str, dict]:
    """alert_id -> its latest verdict row ({} when there is no table yet)."""
    path = Path(path)
    if not path.is_file():
        return {}
    latest: dict[str, dict] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{path}:{n}: not a JSON feedback row ({e})") from None
        latest[row["alert_id"]] = row
    return latest


def sessions_by_verdict(path: str | Path) -> tuple[set[str], set[str]]:
    """(sessions with a benign verdict, sessions with a malicious one), each alert's latest verdict; a session
    judged both ways (two alerts) is in both, and readers keep it out as malicious."""
    rows = read(path).values()
    return ({r["session_id"] for r in rows if r["verdict"] == "benign"},
            {r["session_id"] for r in rows if r["verdict"] == "malicious"})


def load_alerts(path: str | Path) -> list[dict]:
    """Every alert of a complete alerts file; a line that is not an alert is an error naming file and line."""
    from loglm.analyst.alerts_file import AlertsFile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no alerts file {path}")
    f = AlertsFile(path)
    f.refresh(final=True)
    if f.rejected:
        raise ValueError(f"{len(f.rejected)} lines are not alerts: {f.describe_rejected()}")
    return f.alerts


def find_alert(alerts: list[dict], alert_id: str) -> dict:
    for a in alerts:
        if a["alert_id"] == alert_id:
            return a
    raise ValueError(f"no alert {alert_id!r} among {len(alerts)} alerts")
